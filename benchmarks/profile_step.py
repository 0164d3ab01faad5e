"""Where a step's time goes: torch.profiler over steplab steps, top operators by self time.

python benchmarks/profile_step.py                                   # reference config, defaults
python benchmarks/profile_step.py --set train.dtype=float32 --set model.attention=sdpa
python benchmarks/profile_step.py --preset speedrun_cpu             # Muon's share
python benchmarks/profile_step.py --gemm                            # bf16 vs float32 GEMMs
python benchmarks/profile_step.py --preset bpe_small --steps 5 --groups   # time by kind of work
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch


def gemm(shapes: list[tuple[int, int, int]], repeats: int = 200) -> None:
    """Microseconds per matmul (m x k) @ (k x n) in float32 and bf16 (AMX where present)."""

    def per_call(a: torch.Tensor, b: torch.Tensor) -> float:
        for _ in range(20):
            a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
        return (time.perf_counter() - t0) / repeats * 1e6

    print("| m × k × n | float32 µs | bf16 µs | speed-up |\n|---|---|---|---|")
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        f32, b16 = per_call(a, b), per_call(a.bfloat16(), b.bfloat16())
        print(f"| {m} × {k} × {n} | {f32:.0f} | {b16:.0f} | {f32 / b16:.1f}× |")


# Kinds of work, by operator name (first match wins); self time is summed per kind.
KINDS = [
    ("matrix multiplies", ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_mkldnn", "mkldnn")),
    ("loss (log-softmax, nll)", ("log_softmax", "logsoftmax", "nll_loss", "cross_entropy")),
    ("attention (softmax, mask, sdpa)", ("softmax", "scaled_dot_product", "_flash_attention", "masked_fill", "triu")),
    ("norms", ("norm",)),
    ("embedding lookup and its gradient", ("embedding", "index_add", "index_select")),
    ("optimizer and clipping", ("_fused_adam", "_foreach", "adamw", "muon", "clip_grad")),
    ("casts and copies", ("aten::copy_", "aten::_to_copy", "aten::to", "clone", "contiguous")),
    ("element-wise (activations, residuals, rope)", ("aten::mul", "aten::add", "aten::relu", "aten::pow",
     "aten::gelu", "aten::silu", "aten::cat", "aten::neg", "aten::sub", "threshold_backward", "aten::div",
     "aten::tanh", "aten::sum", "aten::fill_", "aten::zero_", "aten::where", "aten::square")),
]  # fmt: skip


def kind_of(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KINDS if any(k.lower() in low for k in keys)), "other")


def grouped(prof: Any) -> str:
    """A table of self CPU time per kind of work, largest first."""
    totals: dict[str, float] = {}
    for e in prof.key_averages():
        totals[kind_of(e.key)] = totals.get(kind_of(e.key), 0.0) + e.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    rows = sorted(totals.items(), key=lambda kv: -kv[1])
    return "| kind of work | share of self time |\n|---|---|\n" + "\n".join(
        f"| {k} | {100 * v / whole:.1f}% |" for k, v in rows
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shakespeare_char")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a config setting")
    ap.add_argument("--steps", type=int, default=20, help="profiled steps (after --warmup steps)")
    ap.add_argument("--rows", type=int, default=20)
    ap.add_argument("--gemm", action="store_true", help="time bf16 vs float32 GEMMs instead")
    ap.add_argument("--groups", action="store_true", help="also sum self time by kind of work")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    args = ap.parse_args()
    if args.gemm:
        gemm([(768, 128, 384), (768, 128, 512), (768, 512, 128), (128, 768, 512)])
        return
    from torch.profiler import ProfilerActivity, profile

    from steplab.config import set_value
    from steplab.loop.session import build
    from steplab.loop.step import train_step
    from steplab.presets import get_preset

    cfg = get_preset(args.preset)
    for kv in args.set:
        key, _, value = kv.partition("=")
        set_value(cfg, key, value)
    cfg.train.progress = False
    s = build(cfg)

    def step(i: int) -> None:
        train_step(s.step_model, s.optimizer, s.micro_batches(i), grad_clip=cfg.optim.grad_clip, amp=s.amp())

    for i in range(args.warmup):
        step(i)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for i in range(args.warmup, args.warmup + args.steps):
            step(i)
        seconds = time.perf_counter() - t0
    print(
        f"preset {args.preset} {' '.join(args.set)}: {1e3 * seconds / args.steps:.1f} ms/step under the profiler\n"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    if args.groups:
        print("\n" + grouped(prof))


if __name__ == "__main__":
    main()
