"""CPU speedrun: training time to whole-split validation loss <= 1.91 on char-level Tiny Shakespeare.

The reference (../shared/bench/reference_gpt.py, unchanged) and `steplab train --preset
speedrun_cpu` run back to back, alternating, for each seed. Both measure validation loss the
same way: mean cross-entropy over the whole validation split (last 10% of the characters)
in non-overlapping windows of 64 tokens; both exclude evaluation time from training time.
steplab's time to target is the `train_seconds` of its first evaluation record at or below
the target.

    python benchmarks/speedrun.py --seeds 1337 1338 1339
"""

from __future__ import annotations

import argparse

from common import median, reference, steplab, table


def reference_time(seed: int, target: float, eval_every: int, max_iters: int) -> float | None:
    lines = reference(
        "--target",
        str(target),
        "--eval-every",
        str(eval_every),
        "--seed",
        str(seed),
        "--max-iters",
        str(max_iters),
    )
    done = lines[-1]
    return done.get("seconds_to_target")


def steplab_time(seed: int, target: float, preset: str, extra: list[str]) -> tuple[float | None, float]:
    summary, records = steplab(
        "--preset", preset, "--train.seed", str(seed), "--train.target-loss", str(target), *extra
    )
    hits = [r for r in records if "val_loss" in r and r["val_loss"] <= target]
    best = min(r["val_loss"] for r in records if "val_loss" in r)
    return (hits[0]["train_seconds"] if hits else None), best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337, 1338, 1339])
    ap.add_argument("--target", type=float, default=1.91)
    ap.add_argument("--preset", default="speedrun_cpu")
    ap.add_argument(
        "--reference-eval-every",
        type=int,
        default=50,
        help="the reference's evaluation interval (finer = its time to target is found sooner)",
    )
    ap.add_argument(
        "--reference-max-iters",
        type=int,
        default=2000,
        help="the reference's schedule length (2000 ends at about 1.91; more if it falls short)",
    )
    ap.add_argument("extra", nargs="*", help="extra steplab flags, after --")
    args = ap.parse_args()
    rows, ratios = [], []
    for seed in args.seeds:
        ref = reference_time(seed, args.target, args.reference_eval_every, args.reference_max_iters)
        ours, best = steplab_time(seed, args.target, args.preset, args.extra)
        ratio = ours / ref if (ours and ref) else None
        if ratio:
            ratios.append(ratio)
        fmt = lambda v: f"{v:.1f}" if v else "not reached"  # noqa: E731
        rows.append([seed, fmt(ref), fmt(ours), f"{best:.4f}", f"{ratio:.2f}" if ratio else "-"])
    print(f"target val loss {args.target}, preset {args.preset}\n")
    print(table(["seed", "reference s", "steplab s", "steplab best val", "ratio"], rows))
    print(f"\nmedian ratio: {median(ratios):.2f}")


if __name__ == "__main__":
    main()
