"""Sharded (DCP) vs gathered checkpoints under FSDP2: save and load time, peak memory per rank.

    PYTHONPATH=src python benchmarks/sharded_checkpoint.py                       # 2 gloo processes
    PYTHONPATH=src python benchmarks/sharded_checkpoint.py --width 1024 --layers 12 --vocab 16384

For each format (`full`: gather to rank 0, one model.safetensors; `sharded`: every rank writes
its own shards, `steplab.sharded`) it starts `--nproc` torchrun processes (gloo, CPU), builds
the model, shards it with FSDP2, takes one AdamW step so the optimizer holds its state, then
saves a checkpoint and restores it into a fresh model and optimizer the way a resume does
(`checkpoint.restore`). Each rank reports the seconds (between barriers) and its peak resident
memory above what it held just before (Linux: the peak is reset through
/proc/self/clear_refs, read from VmHWM). Memory figures hold on a busy machine; the seconds
need a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table


def rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
        fh.write("5")  # VmHWM := VmRSS


def measured(fn) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """(seconds, peak MiB above the resident set at the start) of fn(), between barriers."""
    from steplab import dist as dist_mod

    dist_mod.barrier()
    before = rss_mib()
    reset_peak()
    t0 = time.perf_counter()
    fn()
    dist_mod.barrier()
    return time.perf_counter() - t0, rss_mib("VmHWM") - before


def worker(args: argparse.Namespace) -> None:
    import torch

    from steplab import checkpoint as ckpt
    from steplab import dist as dist_mod
    from steplab.config import RunConfig
    from steplab.data.tokenizer import ByteTokenizer
    from steplab.loop.fit import tokens_per_step  # noqa: F401 - the loop's own imports, warm
    from steplab.model import GPT, count_params
    from steplab.optim import build_optimizer
    from steplab.sharded import save_sharded

    torch.set_num_threads(1)
    info = dist_mod.init_from_env("cpu")
    cfg = RunConfig()
    m = cfg.model
    m.n_layer, m.n_embd, m.n_head, m.block_size, m.vocab_size = (
        args.layers,
        args.width,
        args.width // 64,
        64,
        args.vocab,
    )
    m.pos, m.norm, m.mlp, m.bias = "rope", "rmsnorm", "relu2", False
    cfg.train.parallel, cfg.checkpoint.format = "fsdp", args.format
    device = torch.device("cpu")

    def build() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = dist_mod.apply_fsdp(GPT(m), device)
        return model, build_optimizer(model, cfg.optim, device, m)

    model, opt = build()
    x = torch.randint(0, args.vocab, (info.world_size, 64), generator=torch.Generator().manual_seed(1))
    _, loss = model(x[info.rank : info.rank + 1], x[info.rank : info.rank + 1])
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    run_dir = Path(args.run_dir)
    state, tok = ckpt.TrainState(step=1), ByteTokenizer()

    def save() -> None:
        if args.format == "sharded":
            save_sharded(
                run_dir, model=model, optimizer=opt, state=state, cfg=cfg, tokenizer=tok, is_main=info.is_main
            )
            return
        msd, osd = dist_mod.full_state(model, opt)
        if info.is_main:
            ckpt.save(
                run_dir,
                model=model,
                optimizer=opt,
                model_state=msd,
                optim_state=osd,
                state=state,
                cfg=cfg,
                tokenizer=tok,
            )

    save_s, save_mb = measured(save)
    path = ckpt.latest(run_dir)
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    del model, opt
    model, opt = build()
    load_s, load_mb = measured(lambda: ckpt.restore(path, model=model, optimizer=opt, tokenizer=tok))
    row = {"rank": info.rank, "save_s": save_s, "save_mib": save_mb, "load_s": load_s, "load_mib": load_mb}
    row["params"], row["disk_mib"] = count_params(model), size  # type: ignore[assignment]
    (run_dir.parent / f"rank{info.rank}.json").write_text(json.dumps(row))
    dist_mod.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--format", default="full", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for fmt in ("full", "sharded"):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                   __file__, "--worker", "--format", fmt, "--run-dir", str(Path(tmp) / "run"),
                   "--width", str(args.width), "--layers", str(args.layers), "--vocab", str(args.vocab)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if out.returncode:
                raise SystemExit(out.stderr[-3000:])
            ranks = [json.loads((Path(tmp) / f"rank{r}.json").read_text()) for r in range(args.nproc)]
        for r in ranks:
            rows.append([fmt, r["rank"], f"{r['save_s']:.2f}", f"{r['save_mib']:,.0f}", f"{r['load_s']:.2f}",
                         f"{r['load_mib']:,.0f}", f"{r['disk_mib']:,.0f}"])  # fmt: skip
    params = ranks[0]["params"]
    print(f"`{' '.join(['python', *sys.argv])}`: {params / 1e6:.0f}M parameters, FSDP2 on {args.nproc} gloo "
          f"processes, AdamW (float32 weights and state: {params * 12 / 2**20:,.0f} MiB in all)\n")  # fmt: skip
    print(
        table(["format", "rank", "save s", "save peak +MiB", "load s", "load peak +MiB", "on disk MiB"], rows)
    )


if __name__ == "__main__":
    main()
