"""Scaling: step time and peak memory against width, depth and context length.

One axis at a time moves away from a base model (the reference config: 4 layers, width 128,
context 64, batch 12, AdamW, the machine's default precision); every point runs in a fresh
process, so its peak memory is its own. Step time is the median of timed blocks after a
warm-up; peak memory is the growth of the process's peak resident set while the model is
built and trained (CPU), or the peak bytes held by tensors (CUDA).

    python benchmarks/scaling.py                          # table + docs/img/scaling.png
    python benchmarks/scaling.py --axes context --attention sdpa matmul
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, table

AXES = {
    "width": ("model.n_embd", [64, 128, 256, 512]),
    "depth": ("model.n_layer", [2, 4, 8, 16]),
    "context": ("model.block_size", [64, 128, 256, 512, 1024]),
}


def worker(spec: dict) -> dict:
    """Build the model of `spec`, run warm-up and timed steps, report time and memory."""
    import torch

    from steplab.loop.session import build
    from steplab.loop.step import train_step
    from steplab.model import count_params
    from steplab.presets import get_preset
    from steplab.runtime import rss_bytes

    cfg = get_preset(spec["preset"])
    for key, value in spec["set"].items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    cfg.train.progress = False
    base_rss = rss_bytes() or 0
    s = build(cfg)
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def block(start: int, n: int) -> float:
        t0 = time.perf_counter()
        for i in range(start, start + n):
            out = train_step(s.step_model, s.optimizer, s.micro_batches(i), grad_clip=1.0, amp=s.amp())
        out.loss.item()
        return (time.perf_counter() - t0) / n

    block(0, spec["warmup"])
    times = [block(spec["warmup"] + k * spec["block"], spec["block"]) for k in range(spec["blocks"])]
    if s.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    step = statistics.median(times)
    tokens = cfg.train.batch_size * cfg.model.block_size
    return {
        "params": count_params(s.model),
        "step_ms": 1e3 * step,
        "tokens_per_s": tokens / step,
        "gflops": s.flops_per_token * tokens / step / 1e9,
        "peak_mb": peak / 2**20,
        "device": str(s.device),
        "threads": torch.get_num_threads(),
    }


def run_point(preset: str, settings: dict, args: argparse.Namespace) -> dict:
    spec = {"preset": preset, "set": settings, "warmup": 3, "block": args.block, "blocks": args.blocks}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=1800,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(results: dict[str, list[tuple[int, dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (axis, points) in zip(axes[0], results.items(), strict=True):
        xs = [x for x, _ in points]
        ax.plot(xs, [r["step_ms"] for _, r in points], "o-", color="tab:blue")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(axis.replace("_", " "))
        ax.set_ylabel("ms / step", color="tab:blue")
        mem = ax.twinx()
        mem.plot(xs, [r["peak_mb"] for _, r in points], "s--", color="tab:orange")
        mem.set_ylabel("peak memory (MiB)", color="tab:orange")
        ax.set_title(f"step cost vs {axis.split(' ')[0]}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--preset", default="shakespeare_char")
    ap.add_argument("--axes", nargs="+", choices=list(AXES), default=list(AXES))
    ap.add_argument("--attention", nargs="+", default=["auto"], choices=["auto", "sdpa", "matmul"])
    ap.add_argument("--block", type=int, default=5, help="steps per timed block")
    ap.add_argument("--blocks", type=int, default=4, help="timed blocks per point (median)")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "scaling.png")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    rows, results = [], {}
    for axis in args.axes:
        key, values = AXES[axis]
        for attn in args.attention:
            label = axis if len(args.attention) == 1 else f"{axis} ({attn})"
            results[label] = []
            for v in values:
                r = run_point(args.preset, {key: v, "model.attention": attn}, args)
                results[label].append((v, r))
                rows.append(
                    [
                        label,
                        v,
                        f"{r['params'] / 1e6:.2f}M",
                        f"{r['step_ms']:.1f}",
                        f"{r['tokens_per_s']:,.0f}",
                        f"{r['gflops']:.0f}",
                        f"{r['peak_mb']:.0f}",
                    ]
                )
                print(" | ".join(str(c) for c in rows[-1]), file=sys.stderr)
    dev = results[next(iter(results))][0][1]
    print(f"preset {args.preset} (one axis moved at a time), {dev['device']}, {dev['threads']} threads\n")
    print(table(["axis", "value", "params", "ms/step", "tokens/s", "GFLOP/s", "peak MiB"], rows))
    if args.plot:
        plot(results, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
