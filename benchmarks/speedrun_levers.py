"""Levers for the CPU speedrun, each against the recipe as it is, in alternating pairs.

    PYTHONPATH=src python benchmarks/speedrun_levers.py                        # every lever below, 2 pairs
    PYTHONPATH=src python benchmarks/speedrun_levers.py --levers bf16 softcap30 --pairs 3
    PYTHONPATH=src python benchmarks/speedrun_levers.py --custom "--train.batch-size 32 --optim.lr 2e-2"

Each lever is a set of `steplab train` flags on top of `--preset speedrun_cpu` (plus
`--base` flags for both sides); the baseline and the lever run back to back in fresh
processes, alternating, `--pairs` times, with evaluations every `--eval-every` steps. Per
side: the median training seconds to the first evaluation at or below 1.91 (the preset's
target; "-" when not reached), the median final validation loss (at the target or at the
end), and the median of the paired time ratios (lever / baseline; below 1 is faster).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from common import median, steplab, table

LEVERS = {
    "bf16": ["--train.dtype", "bfloat16"],
    "softcap15": ["--model.logit-softcap", "15"],
    "softcap30": ["--model.logit-softcap", "30"],
    "unet": ["--model.unet-skips", "true"],
    "value-embeds": ["--model.value-embeds", "1"],
    "value-embeds2": ["--model.value-embeds", "2"],
    "no-warmup": ["--schedule.warmup-steps", "0"],
    "1-sqrt": ["--schedule.cooldown", "1-sqrt"],
    "embed-lr3": ["--optim.embed-lr-mult", "3"],
    "momentum95": ["--optim.momentum", "0.95"],
}


def run(flags: list[str], eval_every: int, seed: int) -> tuple[float | None, float]:
    _, records = steplab(
        "--preset", "speedrun_cpu", "--eval.every", str(eval_every), "--train.seed", str(seed), *flags
    )
    evals = [r for r in records if "val_loss" in r]
    hits = [r for r in evals if r["val_loss"] <= 1.91]
    return (hits[0]["train_seconds"] if hits else None), (hits[0] if hits else evals[-1])["val_loss"]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--levers", nargs="*", choices=list(LEVERS), default=list(LEVERS))
    ap.add_argument("--custom", nargs="*", default=[], help="extra levers, each one quoted string of flags")
    ap.add_argument("--base", default="", help="flags for both sides (one quoted string)")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args()
    base = shlex.split(args.base)
    levers = {name: LEVERS[name] for name in args.levers} | {c: shlex.split(c) for c in args.custom}
    rows = []
    for flags in levers.values():
        pairs = [(run(base, args.eval_every, args.seed), run([*base, *flags], args.eval_every, args.seed))
                 for _ in range(args.pairs)]  # fmt: skip
        fmt = lambda xs: f"{median(xs):.1f}" if all(x is not None for x in xs) else "-"  # noqa: E731
        ratios = [b[0] / a[0] for a, b in pairs if a[0] and b[0]]
        rows.append([f"`{' '.join(flags)}`", fmt([a[0] for a, _ in pairs]), fmt([b[0] for _, b in pairs]),
                     f"{median([a[1] for a, _ in pairs]):.4f}", f"{median([b[1] for _, b in pairs]):.4f}",
                     f"{median(ratios):.2f}" if len(ratios) == len(pairs) else "-"])  # fmt: skip
        print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
    print(
        f"`{' '.join(['python', *sys.argv])}`: speedrun_cpu {args.base}, seed {args.seed}, {args.pairs} pairs\n"
    )
    heads = ["lever", "recipe s to 1.91", "with lever s", "recipe val", "with lever val", "time ratio"]
    print(table(heads, rows))


if __name__ == "__main__":
    main()
