"""Plots rebuilt from run directories alone (metrics.jsonl): loss curves for one or many runs.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a
headless machine and `import steplab` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from steplab.track import read_metrics

X_LABELS = {"step": "optimizer step", "tokens": "training tokens", "train_seconds": "training time (s)"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], alpha: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (the smoothed train curve)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha ** (i + 1)))
    return out


def series(records: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    """The (x, y) points of records that carry a finite numeric `y`."""
    xs, ys = [], []
    for r in records:
        v = r.get(y)
        if isinstance(v, (int, float)) and x in r and v == v:  # v == v drops NaN
            xs.append(float(r[x]))
            ys.append(float(v))
    return xs, ys


def loss_curves(
    runs: Mapping[str, Path | Sequence[Mapping[str, Any]]],
    out: Path,
    *,
    x: str = "step",
    title: str | None = None,
    smoothing: float = 0.9,
) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Train (smoothed) and validation loss of several runs against `x`, overlaid in one figure.

    `runs` maps a label to a run directory or to its metric records. Returns the plotted
    series ({label: {"train": (xs, ys), "val": (xs, ys)}}) so callers and tests can check them.
    """
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {', '.join(X_LABELS)} (got {x!r})")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    plotted: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for i, (label, src) in enumerate(runs.items()):
        records = read_metrics(Path(src) / "metrics.jsonl") if isinstance(src, (str, Path)) else list(src)
        color = f"C{i % 10}"
        tx, ty = series(records, x, "loss")
        vx, vy = series(records, x, "val_loss")
        if ty:
            ax.plot(tx, smooth(ty, smoothing), color=color, alpha=0.8, lw=1.2, label=f"{label} train")
        if vy:
            ax.plot(vx, vy, color=color, marker="o", ms=3, lw=1.5, ls="--", label=f"{label} val")
        plotted[label] = {"train": (tx, ty), "val": (vx, vy)}
    ax.set_xlabel(X_LABELS[x])
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    if plotted:
        ax.legend(fontsize=8)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return plotted
