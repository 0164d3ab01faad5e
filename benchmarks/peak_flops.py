"""This machine's peak GEMM FLOP/s in bfloat16 and float32: the denominators of MFU.

    PYTHONPATH=src python benchmarks/peak_flops.py                  # CPU, torch's default threads
    PYTHONPATH=src python benchmarks/peak_flops.py --threads 1 2    # one block of rows per thread count
    PYTHONPATH=src python benchmarks/peak_flops.py --device cuda
    PYTHONPATH=src python benchmarks/peak_flops.py --save           # also store the sweep's best figures

Prints a Markdown table: per dtype and thread count, the quick measurement `steplab train`
makes once per machine (`steplab.runtime.measure_peak_flops` with its defaults, cached in
`$STEPLAB_CACHE/peak_flops.json`), then a sweep over square GEMM sizes (best of 5 at each),
its best, and quick / best: how far the cached figure is from the sweep's. `--save` writes the
sweep's best figures into that cache for the runs that follow. Run on a quiet machine: a busy
one only ever lowers the figures (and raises every MFU computed from them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from steplab.runtime import cache_home, machine_key, measure_peak_flops, time_matmul


def sweep(device: torch.device, dtype: torch.dtype, sizes: list[int]) -> dict[int, float]:
    return {n: 2 * n**3 / time_matmul(n, device, dtype, repeats=5) for n in sizes}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, nargs="*", default=[], help="CPU thread counts (default: torch's)")
    ap.add_argument(
        "--sizes", type=int, nargs="*", default=[], help="GEMM sizes (default: 512 .. 4096, 16384 on GPU)"
    )
    ap.add_argument("--save", action="store_true", help="store the sweep's best figures in the peak cache")
    args = ap.parse_args()
    device = torch.device(args.device)
    sizes = args.sizes or (
        [1024, 2048, 4096, 8192, 16384] if device.type == "cuda" else [512, 1024, 2048, 4096]
    )
    rows, best_of = [], {}
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        for dtype in (torch.bfloat16, torch.float32):
            t0 = time.perf_counter()
            quick = measure_peak_flops(device, dtype)
            quick_s = time.perf_counter() - t0
            by_size = sweep(device, dtype, sizes)
            n, best = max(by_size.items(), key=lambda kv: kv[1])
            best_of[machine_key(device, dtype)] = best
            cells = " | ".join(f"{by_size[s] / 1e9:,.1f}" for s in sizes)
            rows.append(
                f"| {str(dtype).removeprefix('torch.')} | {threads} | {quick / 1e9:,.1f} ({quick_s:.2f} s) "
                f"| {cells} | {best / 1e9:,.1f} (n={n}) | {quick / best:.2f} |"
            )
    where = machine_key(device, torch.float32).rsplit(",", 1)[0]
    print(f"`{' '.join(['python', *sys.argv])}` on {where}\n")
    heads = " | ".join(f"n={s}" for s in sizes)
    print(f"| dtype | threads | quick GFLOP/s (time to measure) | {heads} | best | quick / best |")
    print("|" + "---|" * (len(sizes) + 5))
    print("\n".join(rows))
    if args.save:
        path = cache_home() / "peak_flops.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**known, **best_of}, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
        print(f"\nsaved to {path}")


if __name__ == "__main__":
    main()
