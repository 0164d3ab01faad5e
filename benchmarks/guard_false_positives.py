"""How often do the divergence guard's rules fire on clean runs, and would they catch a poisoned batch?

Trains clean runs with the guard off and a loss record every step, then replays the rules
(`steplab.loop.guard.verdict`) over those per-step losses: the spike rule for several
settings, and the ceiling (`--guard.loss-ceiling` x ln V, from the first step) for several
factors, with the largest loss / ln V each run reached. Counts are in steps, not seconds, so
the result does not depend on the machine's load.

    PYTHONPATH=src python benchmarks/guard_false_positives.py --preset tiny --steps 400 --seeds 1337 7 --lrs 1e-3 1e-2
    PYTHONPATH=src python benchmarks/guard_false_positives.py --preset default            # 600 steps, ~15 CPU-minutes
    PYTHONPATH=src python benchmarks/guard_false_positives.py --preset tiny --steps 200 --lrs 3e-2 1e-1 3e-1 1 10

`margin@k` is threshold / loss at step k: the factor by which a batch's loss must jump at
that step to be flagged (the tests poison batch 35 of the tiny preset, a x1.58 jump).
"""

from __future__ import annotations

import argparse
import itertools
import math
import tempfile
from pathlib import Path

from steplab.config import GuardConfig
from steplab.loop.fit import train
from steplab.loop.guard import ceiling, spike_threshold, update_stats, verdict
from steplab.presets import get_preset
from steplab.rundir import read_metrics


def clean_losses(
    preset: str, steps: int | None, seed: int, lr: float | None, root: Path
) -> tuple[list[float], int]:
    """Per-step losses of a clean run (guard off) and the model's vocabulary size."""
    cfg = get_preset(preset)
    cfg.train.progress, cfg.train.tensorboard, cfg.train.log_every = False, False, 1
    cfg.guard.policy, cfg.eval.every, cfg.train.seed = "off", 0, seed
    if steps:
        cfg.train.max_steps = steps
    if lr:
        cfg.optim.lr = lr
    run = root / f"{preset}-{seed}-{lr}"
    train(cfg, run, overwrite=True, progress=False)
    losses = [r["loss"] for r in read_metrics(run / "metrics.jsonl") if isinstance(r.get("loss"), float)]
    return losses, cfg.model.vocab_size


def replay(
    losses: list[float], cfg: GuardConfig, probe: int, vocab_size: int = 0
) -> tuple[list[int], float | None]:
    st = {"mean": 0.0, "var": 0.0, "accepted": 0}
    flagged, margin = [], None
    limit = ceiling(vocab_size, cfg)
    for i, loss in enumerate(losses):
        reason, threshold = verdict(loss, 1.0, st, cfg, limit=limit)
        if i == probe and st["accepted"] >= cfg.spike_warmup:
            margin = spike_threshold(st["mean"], st["var"], cfg) / loss
        if reason is not None:
            flagged.append(i + 1)
            continue
        st["mean"], st["var"] = update_stats(st["mean"], st["var"], st["accepted"], loss, cfg.spike_decay)
        st["accepted"] += 1
    return flagged, margin


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[1337])
    p.add_argument(
        "--lrs", type=float, nargs="+", default=[0.0], help="peak learning rates (0: the preset's)"
    )
    p.add_argument("--probe", type=int, default=35, help="step whose spike margin is reported")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        series = {
            f"seed {s}, lr {lr or 'preset'}": clean_losses(args.preset, args.steps, s, lr or None, Path(tmp))
            for s, lr in itertools.product(args.seeds, args.lrs)
        }
    default = GuardConfig()
    print(f"preset {args.preset}: {', '.join(f'{k} ({len(v)} steps)' for k, (v, _) in series.items())}")
    print("decay sigma rise | flagged steps per run (spike rule alone) | margin@probe")
    for decay, sigma, rise in itertools.product((0.95, 0.9, 0.8), (4.0, 5.0, 6.0), (0.1,)):
        cfg = GuardConfig(spike_decay=decay, spike_sigma=sigma, spike_rise=rise, loss_ceiling=0)
        results = [replay(v, cfg, args.probe) for v, _ in series.values()]
        mark = (
            "  <- default"
            if (decay, sigma, rise) == (default.spike_decay, default.spike_sigma, default.spike_rise)
            else ""
        )
        flags = "; ".join(f"{len(f)} {f[:3]}" for f, _ in results)
        margins = ", ".join(f"x{m:.2f}" if m else "-" for _, m in results)
        print(f"{decay:5} {sigma:5} {rise:4} | {flags} | {margins}{mark}")
    print(
        "\nceiling (x ln V) | flagged steps per run (default spike rule + ceiling) | max loss / ln V per run"
    )
    peaks = ", ".join(f"{max(v) / math.log(n):.3f}" for v, n in series.values())
    for factor in (1.1, 1.25, 1.5, 2.0):
        cfg = GuardConfig(loss_ceiling=factor)
        results = [replay(v, cfg, args.probe, n) for v, n in series.values()]
        flags = "; ".join(f"{len(f)} {f[:3]}" for f, _ in results)
        mark = "  <- default" if factor == default.loss_ceiling else ""
        print(f"{factor:16} | {flags} | {peaks}{mark}")


if __name__ == "__main__":
    main()
