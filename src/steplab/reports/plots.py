"""Plots rebuilt from run directories alone (metrics.jsonl): loss curves and a training dashboard.

`loss_curves` overlays the train (smoothed) and validation loss of several runs in one
figure; `dashboard` puts loss against steps, tokens and wall-clock time next to the
learning rate, gradient norm, throughput, bits per byte and memory. Both return the series
they drew, so callers and tests check data, not pixels. The file type follows the suffix of
the output path (.png, .svg or .pdf).

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a
headless machine and `import steplab` stays light.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError
from steplab.figures import pyplot, smooth
from steplab.rundir import read_metrics

X_LABELS = {
    "step": "optimizer step",
    "tokens": "training tokens",
    "train_seconds": "training time (s)",
    "elapsed_seconds": "wall-clock time (s)",
}
FORMATS = (".png", ".svg", ".pdf")

Series = tuple[list[float], list[float]]
Source = Path | str | Sequence[Mapping[str, Any]]


def series(records: Sequence[Mapping[str, Any]], x: str, y: str) -> Series:
    """The (x, y) points of records that carry a finite numeric `y`."""
    xs, ys = [], []
    for r in records:
        v = r.get(y)
        if isinstance(v, (int, float)) and x in r and v == v:  # v == v drops NaN
            xs.append(float(r[x]))
            ys.append(float(v))
    return xs, ys


def _records(src: Source) -> list[Mapping[str, Any]]:
    if isinstance(src, (str, Path)):
        return list(read_metrics(Path(src) / "metrics.jsonl"))
    return list(src)


def _check_out(out: Path) -> Path:
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise SteplabError(f"{out}: the plot format follows the suffix; use one of {', '.join(FORMATS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


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
    out = _check_out(out)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    records = {label: _records(src) for label, src in runs.items()}
    scale = _x_scale(x, _xs(records.values(), x, ("loss", "val_loss")))
    plotted: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for i, (label, recs) in enumerate(records.items()):
        plotted[label] = _draw_loss(ax, recs, x, scale, f"C{i % 10}", smoothing, label=label)
    _style_axis(ax, x, "loss (nats/token)", scale)
    if title:
        ax.set_title(title)
    if plotted:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return plotted


def _draw_loss(
    ax: Any,
    records: Sequence[Mapping[str, Any]],
    x: str,
    scale: float,
    color: str,
    smoothing: float,
    label: str | None,
) -> dict[str, Series]:
    """Raw train loss faint, its smoothed curve solid, validation loss as dashed points."""
    tx, ty = series(records, x, "loss")
    vx, vy = series(records, x, "val_loss")
    if ty:
        if len(ty) > 1:
            ax.plot([v / scale for v in tx], ty, color=color, alpha=0.15, lw=0.8)
        ax.plot(
            [v / scale for v in tx],
            smooth(ty, smoothing),
            color=color,
            lw=1.4,
            label=f"{label} train" if label else None,
        )
    if vy:
        ax.plot(
            [v / scale for v in vx],
            vy,
            color=color,
            marker="o",
            ms=3.5,
            lw=1.2,
            ls="--",
            label=f"{label} val" if label else None,
        )
    return {"train": (tx, ty), "val": (vx, vy)}


def _xs(runs: Any, x: str, keys: Sequence[str]) -> list[float]:
    """Every x value that some run plots for one of `keys` (to pick one axis unit for all)."""
    return [v for recs in runs for k in keys for v in series(recs, x, k)[0]]


def _x_scale(x: str, values: Sequence[float]) -> float:
    """Long runs are easier to read in minutes or hours than in seconds."""
    if not x.endswith("_seconds") or not values:
        return 1.0
    top = max(values)
    return 3600.0 if top > 3 * 3600 else 60.0 if top > 300 else 1.0


def _style_axis(ax: Any, x: str, ylabel: str, scale: float = 1.0) -> None:
    from matplotlib.ticker import EngFormatter

    label = X_LABELS[x]
    if scale != 1.0:
        label = label.replace("(s)", "(min)" if scale == 60.0 else "(h)")
    ax.set_xlabel(label)
    ax.set_ylabel(ylabel)
    if x == "tokens":
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 1.2M, not 1200000
    ax.grid(alpha=0.3)


@dataclass(frozen=True)
class Panel:
    """One subplot of the dashboard: metric keys (the first a run has is drawn) against `x`."""

    title: str
    x: str
    keys: tuple[str, ...]
    ylabel: str
    log_y: bool = False


PANELS: dict[str, Panel] = {
    "loss_vs_step": Panel("loss vs steps", "step", ("loss", "val_loss"), "loss (nats/token)"),
    "loss_vs_tokens": Panel("loss vs tokens", "tokens", ("loss", "val_loss"), "loss (nats/token)"),
    "loss_vs_time": Panel(
        "loss vs wall-clock time", "elapsed_seconds", ("loss", "val_loss"), "loss (nats/token)"
    ),
    "val_bpb": Panel("validation bits per byte", "tokens", ("val_bpb",), "bits per byte"),
    "lr": Panel("learning rate", "step", ("lr",), "learning rate"),
    "grad_norm": Panel("gradient norm (before clipping)", "step", ("grad_norm",), "global L2 norm", True),
    "tokens_per_second": Panel("throughput", "step", ("tokens_per_second",), "tokens / s"),
    "memory": Panel(
        "memory (CUDA: peak allocated; CPU: process RSS)", "step", ("peak_mem_mb", "rss_mb"), "MiB"
    ),
}


def dashboard(
    runs: Mapping[str, Source],
    out: Path,
    *,
    title: str | None = None,
    smoothing: float = 0.9,
) -> dict[str, dict[str, dict[str, Series]]]:
    """Every panel of `PANELS` for several runs overlaid (one colour per run), in one figure.

    Returns {panel: {label: {series: (xs, ys)}}}: "train" and "val" for the loss panels,
    the metric's key (``lr``, ``grad_norm``, ...) for the others. A panel no run has data for
    says so instead of staying blank.
    """
    out = _check_out(out)
    plt = pyplot()
    from matplotlib.lines import Line2D

    cols = 4
    rows = -(-len(PANELS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows + 0.8), squeeze=False)
    records = {label: _records(src) for label, src in runs.items()}
    plotted: dict[str, dict[str, dict[str, Series]]] = {name: {} for name in PANELS}
    for ax, (name, panel) in zip(axes.flat, PANELS.items(), strict=False):
        xs_all = _xs(records.values(), panel.x, panel.keys)
        scale = _x_scale(panel.x, xs_all)
        for i, (label, recs) in enumerate(records.items()):
            color = f"C{i % 10}"
            if panel.keys == ("loss", "val_loss"):
                got = _draw_loss(ax, recs, panel.x, scale, color, smoothing, label=None)
            else:
                key = next((k for k in panel.keys if series(recs, panel.x, k)[1]), panel.keys[0])
                px, py = series(recs, panel.x, key)
                got = {key: (px, py)}
                if py:
                    marker = "o" if key.startswith("val_") else None
                    ax.plot([v / scale for v in px], py, color=color, lw=1.3, marker=marker, ms=3.5)
            plotted[name][label] = got
        _style_axis(ax, panel.x, panel.ylabel, scale)
        ax.set_title(panel.title, fontsize=10)
        if panel.log_y and xs_all:
            ax.set_yscale("log")
        if not xs_all:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in list(axes.flat)[len(PANELS) :]:
        ax.set_visible(False)
    handles = [Line2D([], [], color=f"C{i % 10}", lw=2.5, label=label) for i, label in enumerate(records)]
    handles += [
        Line2D([], [], color="gray", lw=1.4, label=f"train loss (EMA {smoothing:g})"),
        Line2D([], [], color="gray", lw=1.2, ls="--", marker="o", ms=3.5, label="validation"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
    if title:
        fig.suptitle(title, y=0.995, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.93 if title else 0.95))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return plotted
