"""Model FLOPs utilisation of the training step on this CPU, against both measured GEMM peaks.

    PYTHONPATH=src python benchmarks/mfu_cpu.py                                   # bpe_small, 4 variants
    PYTHONPATH=src python benchmarks/mfu_cpu.py --variants float32 bfloat16 --blocks 10
    PYTHONPATH=src python benchmarks/mfu_cpu.py --preset default --set train.batch-size=64

One session per variant (dtype, compiled or not) on the same model, data and seed, built in
one process; after warm-up (compilation included) the variants take turns in blocks of
`--block-steps` training steps (`train_step`: forward, backward, clip, optimizer), so the
machine's drift falls on all alike; each variant's figure is its median block. MFU is the
model's FLOPs per token (6N + 12·L·C·T, `model.flops_per_token`) times tokens/s over the
machine's peak GEMM FLOP/s in bf16 and in float32 (`runtime.peak_flops`: measured once and
cached; `benchmarks/peak_flops.py --save` stores a sweep's best instead). Run it on a quiet
machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import table

VARIANTS = {
    "float32": {"train.dtype": "float32"},
    "bfloat16": {"train.dtype": "bfloat16"},
    "float32 compile": {"train.dtype": "float32", "train.compile": "true"},
    "bfloat16 compile": {"train.dtype": "bfloat16", "train.compile": "true"},
}


def build_session(preset: str, settings: dict[str, str]):  # type: ignore[no-untyped-def]
    from steplab.config import set_value
    from steplab.loop.session import build
    from steplab.presets import get_preset

    cfg = get_preset(preset)
    for key, value in settings.items():
        set_value(cfg, key, value)
    cfg.train.progress = False
    return build(cfg)


def timed_block(s, start: int, n: int) -> float:  # type: ignore[no-untyped-def]
    from steplab.loop.step import train_step

    t0 = time.perf_counter()
    for i in range(start, start + n):
        out = train_step(
            s.step_model, s.optimizer, s.micro_batches(i), grad_clip=s.cfg.optim.grad_clip, amp=s.amp()
        )
    out.loss.item()
    return time.perf_counter() - t0


def main() -> None:
    from steplab.runtime import peak_flops

    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--preset", default="bpe_small")
    ap.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a config setting for all"
    )
    ap.add_argument("--variants", nargs="*", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--blocks", type=int, default=6, help="timed blocks per variant")
    ap.add_argument("--block-steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation included)")
    args = ap.parse_args()
    common = dict(kv.partition("=")[::2] for kv in args.set)
    sessions = {v: build_session(args.preset, {**common, **VARIANTS[v]}) for v in args.variants}
    step = {v: 0 for v in sessions}
    for v, s in sessions.items():
        timed_block(s, 0, args.warmup)
        step[v] = args.warmup
    blocks: dict[str, list[float]] = {v: [] for v in sessions}
    for _ in range(args.blocks):
        for v, s in sessions.items():
            blocks[v].append(timed_block(s, step[v], args.block_steps) / args.block_steps)
            step[v] += args.block_steps
    cpu = torch.device("cpu")
    peaks = {"bf16": peak_flops(cpu, torch.bfloat16), "fp32": peak_flops(cpu, None)}
    rows = []
    for v, s in sessions.items():
        sec = statistics.median(blocks[v])
        tokens = s.cfg.train.batch_size * s.cfg.train.grad_accum * s.cfg.model.block_size
        flops = s.flops_per_token * tokens / sec
        mfu = [f"{100 * flops / p:.1f}%" if p else "n/a" for p in peaks.values()]
        rows.append([v, f"{1e3 * sec:,.0f}", f"{tokens / sec:,.0f}", f"{flops / 1e9:,.0f}", *mfu])
    s0 = next(iter(sessions.values()))
    n_params = sum(p.numel() for p in s0.model.parameters())
    print(f"`{' '.join(['python', *sys.argv])}`: preset {args.preset} ({n_params / 1e6:.1f}M params, "
          f"{s0.flops_per_token / 1e6:.0f} MFLOP/token), {torch.get_num_threads()} threads; median of "
          f"{args.blocks} alternating blocks of {args.block_steps} steps; peaks: "
          + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in peaks.items() if v) + "\n")  # fmt: skip
    print(table(["variant", "ms/step", "tokens/s", "GFLOP/s", "MFU vs bf16 peak", "MFU vs fp32 peak"], rows))


if __name__ == "__main__":
    main()
