"""The GPU path in one prepared script: every check of issue 17 §2, a Markdown report and JSON.

    python benchmarks/gpu.py --out gpu-results          # on a CUDA machine: all checks, ~6 min on an H100/H200
    python benchmarks/gpu.py --only mfu speedrun        # some of them
    python benchmarks/gpu.py --dry-run --out /tmp/dry   # the same plumbing on a CPU, tiny sizes (tests/test_gpu_script.py)

The checks (each runs `steplab` in fresh processes, as a user would):

- ``mfu``: GPT-2 small's shape (12 layers, 12 heads, width 768, context 1024, tied head,
  embedding of 50304 rows so the FLOPs are GPT-2's 124M) on BPE (trained locally on the
  bundled corpus: nothing downloaded), bf16 autocast, eager and ``--train.compile``:
  tokens/s and MFU from the run's own metrics after ``--warmup`` steps (compilation and
  allocator warm-up left out); MFU is model FLOPs (6N + 12·L·C·T per token) over the
  device's published dense bf16 peak (`PEAK_FLOPS` in runtime.py). Goal: ≥ 45% compiled.
- ``speedrun``: the ``speedrun_cpu`` recipe on the GPU and on this machine's CPU, all 165
  steps (no early stop): the validation loss at every evaluation, side by side. Goal: every
  point within 0.03 and both at or below 1.91 at the end.
- ``batch_find``: ``steplab batch-find`` at GPT-2 small on the GPU, whose largest-micro-batch
  search runs real steps until CUDA runs out of memory (the trial path, never run before):
  the largest batch must be found below the search's cap, i.e. an out-of-memory error was
  met and recovered from.
- ``parallel``: with N ≥ 2 GPUs, DDP and FSDP2 on all of them (tokens/s, MFU), and a sharded
  checkpoint written by N FSDP processes resumed by one; with one GPU the multi-process part
  is skipped (said so in the report) and the sharded save and resume run on that GPU alone.

``--dry-run`` runs every check on the CPU with tiny sizes and 2 gloo processes for
``parallel`` (and leaves out the compiled run, minutes of compilation on a CPU): it proves
the plumbing, not the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import median, table

GPT2_SMALL = ["--preset", "gpt2_small", "--model.vocab-size", "50304", "--tokenizer", "bpe",
              "--tokenizer.vocab-size", "8192"]  # fmt: skip
TINY = ["--preset", "gpt2_small", "--model.n-layer", "2", "--model.n-head", "2", "--model.n-embd", "64",
        "--model.block-size", "64", "--model.vocab-size", "512", "--tokenizer", "bpe",
        "--tokenizer.vocab-size", "300"]  # fmt: skip
QUIET = [
    "--quiet",
    "--train.tensorboard",
    "false",
    "--eval.max-windows",
    "16",
    "--checkpoint.keep-best",
    "false",
]


@dataclass
class Plan:
    """What the checks run on: the device, the model, steps and processes."""

    device: str
    model: list[str]
    batch: int
    steps: int
    warmup: int
    nproc: int  # processes for the parallel check (0: not enough GPUs)
    dry: bool


def make_plan(args: argparse.Namespace) -> Plan:
    if args.dry_run:
        return Plan("cpu", TINY, batch=4, steps=12, warmup=4, nproc=2, dry=True)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device visible: run on a GPU machine, or pass --dry-run")
    n = torch.cuda.device_count()
    return Plan(
        "cuda",
        GPT2_SMALL,
        batch=args.batch,
        steps=args.steps,
        warmup=args.warmup,
        nproc=n if n >= 2 else 0,
        dry=False,
    )


def steplab(argv: list[str], *, nproc: int = 1, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """`steplab ARGV` in a fresh process (under torchrun for nproc > 1); fails loudly."""
    from steplab.dist import torchrun_command

    cmd = torchrun_command(nproc, argv) if nproc > 1 else [sys.executable, "-m", "steplab", *argv]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"`{' '.join(argv)}` exited {out.returncode}:\n{out.stderr[-3000:]}")
    return out


def records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def throughput(run_dir: Path, warmup: int) -> dict[str, Any]:
    """Median tokens/s and MFU of the logged steps after `warmup`, and the peak memory."""
    logs = [r for r in records(run_dir) if "loss" in r and r["step"] > warmup]
    if not logs:
        raise RuntimeError(f"no logged steps after step {warmup} in {run_dir}; raise --steps")
    mfu = [r["mfu"] for r in logs if "mfu" in r]
    return {
        "tokens_per_s": median([r["tokens_per_second"] for r in logs]),
        "mfu": median(mfu) if mfu else None,
        "peak_mib": max(r.get("peak_mem_mb", r.get("rss_mb", 0.0)) for r in logs),
    }


def train_args(plan: Plan, run_dir: Path, *extra: str) -> list[str]:
    return ["train", *plan.model, *QUIET, "--run-dir", str(run_dir), "--train.device", plan.device,
            "--train.dtype", "bfloat16", "--train.batch-size", str(plan.batch), "--train.max-steps",
            str(plan.steps), "--train.log-every", str(max(1, plan.warmup // 4)), "--eval.every", "0", *extra]  # fmt: skip


# --- the checks --------------------------------------------------------------------------------


def check_mfu(plan: Plan, tmp: Path) -> dict[str, Any]:
    rows = {}
    variants = [("eager", []), ("compile", ["--train.compile"])]
    for name, extra in variants[:1] if plan.dry else variants:  # compiling on a CPU takes minutes
        steplab(train_args(plan, tmp / name, *extra))
        rows[name] = throughput(tmp / name, plan.warmup)
    compiled = rows.get("compile", rows["eager"])["mfu"]
    met = plan.dry or (compiled is not None and compiled >= 0.45)
    return {"rows": rows, "goal": "MFU >= 45% with compile", "met": met}


def check_speedrun(plan: Plan, tmp: Path) -> dict[str, Any]:
    short = ["--train.max-steps", "20", "--eval.every", "10"] if plan.dry else []
    curves = {}
    for device in dict.fromkeys([plan.device, "cpu"]):
        run = tmp / f"speedrun-{device}"
        steplab(["train", "--preset", "speedrun_cpu", "--quiet", "--train.tensorboard", "false",
                 "--train.target-loss", "none", "--run-dir", str(run), "--train.device", device, *short])  # fmt: skip
        curves[device] = {r["step"]: r["val_loss"] for r in records(run) if "val_loss" in r}
    steps = sorted(set.intersection(*(set(c) for c in curves.values())))
    diffs = [abs(curves[plan.device][s] - curves["cpu"][s]) for s in steps]
    final = [c[steps[-1]] for c in curves.values()]
    met = bool(steps) and max(diffs) <= 0.03 and (plan.dry or max(final) <= 1.91)
    return {
        "curves": curves,
        "max_abs_diff": max(diffs),
        "goal": "every eval within 0.03; both <= 1.91",
        "met": met,
    }


def check_batch_find(plan: Plan, tmp: Path) -> dict[str, Any]:
    out = tmp / "batch_find.json"
    steplab(["batch-find", *plan.model, "--train.device", plan.device, "--train.batch-size",
             str(plan.batch), "--warmup-steps", "2", "--rounds", "2", "--out", str(out)])  # fmt: skip
    res = json.loads(out.read_text())
    mem = res["memory"]
    cap = 4096  # tools.batch_find.fit_memory's cap
    trial = mem["method"] == "trial"
    return {
        "method": mem["method"],
        "max_micro_batch": mem["max_micro_batch"],
        "goal": "the CUDA trial search meets out-of-memory and finds a batch below its cap",
        "met": (trial and 0 < mem["max_micro_batch"] < cap) or (plan.dry and mem["max_micro_batch"] > 0),
    }


def check_parallel(plan: Plan, tmp: Path) -> dict[str, Any]:
    result: dict[str, Any] = {"processes": plan.nproc, "rows": {}}
    n = plan.nproc or 1
    if plan.nproc:
        for mode in ("ddp", "fsdp"):
            run = tmp / mode
            steplab(
                train_args(plan, run, "--train.parallel", mode, "--train.batch-size", str(plan.batch * n)),
                nproc=n,
            )
            result["rows"][mode] = throughput(run, plan.warmup)
    else:
        result["skipped"] = "one GPU: DDP and FSDP need at least two"
    run = tmp / "sharded"  # saved by n FSDP processes (or one), resumed by one for 4 more steps
    sharded = (
        "--checkpoint.format",
        "sharded",
        "--train.parallel",
        "fsdp",
        "--train.batch-size",
        str(plan.batch * n),
    )
    steplab([*train_args(plan, run, *sharded)], nproc=n)
    resumed = [*train_args(plan, run, *sharded), "--resume", "--train.max-steps", str(plan.steps + 4)]
    steplab(resumed)
    last = max(r["step"] for r in records(run) if "loss" in r)
    shards = len(list(min((run / "checkpoints").glob("step_*")).joinpath("shards").iterdir()))
    result["sharded_resume"] = {"saved_by": n, "shards": shards, "resumed_to_step": last}
    result["goal"] = "DDP and FSDP run on every GPU; a sharded checkpoint saved by N resumes on 1"
    result["met"] = last == plan.steps + 4 and all(r["tokens_per_s"] > 0 for r in result["rows"].values())
    return result


CHECKS = {
    "mfu": check_mfu,
    "speedrun": check_speedrun,
    "batch_find": check_batch_find,
    "parallel": check_parallel,
}


# --- the report ----------------------------------------------------------------------------------


def device_line(plan: Plan) -> str:
    import torch

    if plan.device != "cuda":
        return f"dry run on the CPU, torch {torch.__version__}"
    name = torch.cuda.get_device_name(0)
    return f"{torch.cuda.device_count()} x {name}, torch {torch.__version__}, CUDA {torch.version.cuda}"


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def report(plan: Plan, results: dict[str, Any], seconds: float) -> str:
    lines = [f"`{' '.join(['python', *sys.argv])}` on {device_line(plan)} ({seconds:.0f} s)", ""]
    for name, r in results.items():
        if "error" in r:
            lines += [f"**{name}**: failed: {r['error'].splitlines()[0]}", ""]
            continue
        lines.append(f"**{name}** ({r['goal']}): {'met' if r['met'] else 'NOT met'}")
        if name in ("mfu", "parallel") and r.get("rows"):
            rows = [
                [k, f"{v['tokens_per_s']:,.0f}", pct(v["mfu"]), f"{v['peak_mib']:,.0f}"]
                for k, v in r["rows"].items()
            ]
            lines += ["", table(["run", "tokens/s", "MFU", "peak MiB"], rows)]
        if name == "speedrun":
            devices = list(r["curves"])
            steps = sorted(set.intersection(*(set(c) for c in r["curves"].values())))
            rows = [[s, *(f"{r['curves'][d][s]:.4f}" for d in devices)] for s in steps]
            lines += ["", table(["step", *(f"val loss ({d})" for d in devices)], rows)]
        if name == "batch_find":
            lines.append(f"method {r['method']}, largest micro-batch {r['max_micro_batch']}")
        if name == "parallel":
            lines.append(f"{r.get('skipped', '')} sharded checkpoint: {r['sharded_resume']}".strip())
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=list(CHECKS), default=list(CHECKS))
    ap.add_argument("--batch", type=int, default=16, help="sequences per step and GPU (GPT-2 small)")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument(
        "--warmup", type=int, default=40, help="steps left out of tokens/s (compilation, warm-up)"
    )
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the plumbing only")
    ap.add_argument("--out", default=None, help="directory for gpu.json and gpu.md")
    args = ap.parse_args()
    plan = make_plan(args)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("STEPLAB_CACHE", str(Path(tmp) / "cache"))  # one BPE training for every check
        for name in args.only:
            work = Path(tmp) / name
            work.mkdir()
            try:
                results[name] = CHECKS[name](plan, work)
            except Exception as e:  # one failed check must not hide the others' figures
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"{name}: {'failed' if 'error' in results[name] else 'done'}", file=sys.stderr, flush=True)
    text = report(plan, results, time.perf_counter() - t0)
    print(text)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.md").write_text(text + "\n")
        (out / "gpu.json").write_text(
            json.dumps({"device": device_line(plan), "results": results}, indent=1, default=str)
        )
    sys.exit(1 if any("error" in r for r in results.values()) else 0)


if __name__ == "__main__":
    main()
