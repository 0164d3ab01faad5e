"""What the run-directory lock, the checks and the atomic writes cost, against a run's wall time.

One `steplab train` does, once each: check and lock the run directory (`RunDir.open`/`close`),
verify the token cache's checksum, estimate the memory (`check_fits`), and about six atomic
JSON/TOML writes (config, tokenizer, run.json three times, summary). Each is timed over
`--repeats` repetitions (median), then the per-run total is compared with the wall time of a
finished run (its last ``elapsed_seconds``):

    steplab train --run-dir runs/default --overwrite          # or `make run`
    PYTHONPATH=src python benchmarks/safety_overhead.py --run runs/default --repeats 100

Timings need a quiet machine.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from steplab.atomic import write_file
from steplab.data.cache import _verified_meta, cache_dir, prepare
from steplab.presets import get_preset
from steplab.rundir import RunDir, check_run_dir, read_metrics
from steplab.sizing import check_fits

ATOMIC_WRITES_PER_RUN = 6


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a finished run (its wall time is the reference)")
    ap.add_argument("--repeats", type=int, default=100)
    args = ap.parse_args()
    records = [r for r in read_metrics(args.run / "metrics.jsonl") if "elapsed_seconds" in r]
    if not records:
        raise SystemExit(f"{args.run}: no metrics with elapsed_seconds (train it first)")
    wall = float(records[-1]["elapsed_seconds"])

    cfg = get_preset("default")
    data = prepare(cfg.data, cfg.tokenizer)  # the cache the run used
    cfg.model.vocab_size = data.tokenizer.vocab_size
    cache, _ = cache_dir(cfg.data, cfg.tokenizer)
    assert _verified_meta(cache, warn=False) is not None, f"{cache}: not a valid cache"

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp) / "run"

        def open_close() -> None:
            RunDir(fresh).open(resume=False, overwrite=False).close()

        costs = {
            "lock (open + close a run dir)": median_seconds(open_close, args.repeats),
            "run-dir check of an existing run": median_seconds(
                lambda: check_run_dir(args.run, resume=True, overwrite=False), args.repeats
            ),
            "token cache checksum": median_seconds(lambda: _verified_meta(cache, warn=False), args.repeats),
            "memory estimate": median_seconds(lambda: check_fits(cfg, torch.device("cpu")), args.repeats),
            f"{ATOMIC_WRITES_PER_RUN} atomic JSON writes": ATOMIC_WRITES_PER_RUN
            * median_seconds(lambda: write_file(Path(tmp) / "run.json", "{}" * 500), args.repeats),
        }
    total = sum(costs.values())
    for name, s in costs.items():
        print(f"{name:36s} {s * 1e3:9.3f} ms  ({100 * s / wall:.4f}% of the run)")
    print(
        f"{'total per run':36s} {total * 1e3:9.3f} ms  ({100 * total / wall:.4f}% of {wall:.1f} s wall time)"
    )


if __name__ == "__main__":
    main()
