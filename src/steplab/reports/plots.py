"""Plots rebuilt from run directories alone (metrics.jsonl): loss curves and a training dashboard.

`loss_curves` overlays the train (smoothed) and validation loss of several runs in one
figure; `dashboard` puts loss against steps, tokens and wall-clock time next to the
learning rate, gradient norm, throughput, bits per byte and memory. Both return the series
they drew, so callers and tests check data, not pixels. The file type follows the suffix of
the output path (.png, .svg or .pdf).

Pictures that do not mislead: a run has the same colour in every figure (`colors_for` keys
it by the run's label, not by its position); the train curve is smoothed only as much as
its number of points allows (`smoothing_for`: a short run is drawn nearly raw, so its curve
does not trail far above the loss the table reports); validation points are drawn as they
are; the y axis is clipped to the range of runs that learn, and a diverged run is marked
with an x at its last finite point and "(diverged)" in the legend.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a
headless machine and `import steplab` stays light.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab.atomic import replacing
from steplab.errors import SteplabError
from steplab.figures import colors_for, pyplot, sane_limits, smooth, smoothing_for
from steplab.rundir import read_metrics

X_LABELS = {
    "step": "optimizer step",
    "tokens": "training tokens",
    "train_seconds": "training time (s)",
    "elapsed_seconds": "wall-clock time (s)",
}
FORMATS = (".png", ".svg", ".pdf")
BLOWN_UP = 1.2  # a run whose last train loss is this many times its first has diverged

Series = tuple[list[float], list[float]]
Source = Path | str | Sequence[Mapping[str, Any]]


def series(records: Sequence[Mapping[str, Any]], x: str, y: str) -> Series:
    """The (x, y) points of records that carry a finite numeric `y`."""
    xs, ys = [], []
    for r in records:
        v = r.get(y)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and x in r and math.isfinite(v):
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


def diverged_in(records: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a run's records show a divergence: a non-finite loss, the guard giving up, or a
    train loss that ends well above where it started (`BLOWN_UP` times its first value)."""
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), (int, float))]
    if len(losses) >= 3 and losses[-1] > BLOWN_UP * losses[0] > 0:
        return True
    for r in records:
        for key in ("loss", "val_loss"):
            v = r.get(key)
            if isinstance(v, str) or (isinstance(v, float) and not math.isfinite(v)):
                return True
        if r.get("event") == "guard" and r.get("action") in ("give_up", "stop"):
            return True
    return False


@dataclass(frozen=True)
class Style:
    """How each run is drawn: its colour (the same in every figure), its legend text, and
    whether it diverged (an x at its last finite point, "(diverged)" in the legend)."""

    colors: dict[str, str]
    legends: dict[str, str]
    diverged: frozenset[str]

    @classmethod
    def of(
        cls,
        records: Mapping[str, Sequence[Mapping[str, Any]]],
        legends: Mapping[str, str] | None = None,
        diverged: Collection[str] = (),
    ) -> Style:
        gone = frozenset(diverged) | {k for k, recs in records.items() if diverged_in(recs)}
        text = {k: (legends or {}).get(k, k) + (" (diverged)" if k in gone else "") for k in records}
        return cls(colors_for(records), text, gone)


def loss_curves(
    runs: Mapping[str, Path | Sequence[Mapping[str, Any]]],
    out: Path,
    *,
    x: str = "step",
    title: str | None = None,
    smoothing: float = 0.9,
    legends: Mapping[str, str] | None = None,
    diverged: Collection[str] = (),
) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Train (smoothed) and validation loss of several runs against `x`, overlaid in one figure.

    `runs` maps a label to a run directory or to its metric records; `legends` gives a label
    the text its legend shows (default: the label), `diverged` the labels to mark as diverged
    (runs whose records show it are marked anyway). Returns the plotted series
    ({label: {"train": (xs, ys), "val": (xs, ys)}}) so callers and tests can check them.
    """
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {', '.join(X_LABELS)} (got {x!r})")
    out = _check_out(out)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    records = {label: _records(src) for label, src in runs.items()}
    style = Style.of(records, legends, diverged)
    scale = _x_scale(x, _xs(records.values(), x, ("loss", "val_loss")))
    plotted: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    alphas = []
    for label, recs in records.items():
        plotted[label], alpha = _draw_loss(ax, recs, x, scale, style.colors[label], smoothing)
        alphas.append(alpha)
    _limit_and_mark(ax, plotted, style, scale)
    _style_axis(ax, x, "loss (nats/token)", scale)
    if title:
        ax.set_title(title)
    if plotted:
        ax.legend(handles=_legend_handles(style, records, alphas), fontsize=8)
    fig.tight_layout()
    with replacing(out) as tmp:  # a full disk leaves no half-written picture
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return plotted


def _draw_loss(
    ax: Any, records: Sequence[Mapping[str, Any]], x: str, scale: float, color: str, smoothing: float
) -> tuple[dict[str, Series], float]:
    """Train loss solid (smoothed only when there are enough points for it: `smoothing_for`,
    the raw values faint behind), validation loss as dashed points drawn as they are.
    Returns the series and the smoothing factor used."""
    tx, ty = series(records, x, "loss")
    vx, vy = series(records, x, "val_loss")
    alpha = smoothing_for(smoothing, len(ty))
    if ty:
        xs = [v / scale for v in tx]
        if alpha > 0:
            ax.plot(xs, ty, color=color, alpha=0.2, lw=0.8)
        ax.plot(xs, smooth(ty, alpha) if alpha > 0 else ty, color=color, lw=1.5)
    if vy:
        ax.plot([v / scale for v in vx], vy, color=color, marker="o", ms=3.5, lw=1.2, ls="--")
    return {"train": (tx, ty), "val": (vx, vy)}, alpha


def loss_limits(
    plotted: Mapping[str, Mapping[str, Series]], diverged: Collection[str]
) -> tuple[float, float] | None:
    """The loss axis: `sane_limits` of the runs that did not diverge (all, if every one did)."""
    learning = [label for label in plotted if label not in diverged] or list(plotted)
    return sane_limits([ys for label in learning for _, ys in plotted[label].values()])


def _limit_and_mark(ax: Any, plotted: Mapping[str, Mapping[str, Series]], style: Style, scale: float) -> None:
    """Clip the y axis to the range of the runs that did not diverge (`sane_limits`) and put
    an x at the last finite point of each diverged run, at the top edge when it is above."""
    limits = loss_limits(plotted, style.diverged)
    if limits is not None:
        ax.set_ylim(*limits)
    for label, got in plotted.items():
        if label not in style.diverged:
            continue
        points = [(px, py) for xs, ys in got.values() for px, py in zip(xs, ys, strict=True)]
        if not points:
            continue
        px, py = max(points)
        if limits is not None:
            py = min(py, limits[1] - 0.03 * (limits[1] - limits[0]))  # inside the top edge
        ax.plot(
            [px / scale],
            [py],
            marker="x",
            ms=10,
            mew=2.5,
            ls="none",
            color=style.colors[label],
        )


def _legend_handles(style: Style, records: Mapping[str, Any], alphas: Sequence[float]) -> list[Any]:
    """One entry per run in its colour, then what solid and dashed lines mean."""
    from matplotlib.lines import Line2D

    handles = []
    for label in records:
        marker = "x" if label in style.diverged else None
        handles.append(
            Line2D(
                [], [], color=style.colors[label], lw=2.5, marker=marker, mew=2, label=style.legends[label]
            )
        )
    top = max(alphas, default=0.0)
    if top == 0:
        train = "train loss (raw)"
    else:
        train = f"train loss (EMA {top:.2g})" if min(alphas) == top else f"train loss (EMA up to {top:.2g})"
    handles += [
        Line2D([], [], color="gray", lw=1.5, label=train),
        Line2D([], [], color="gray", lw=1.2, ls="--", marker="o", ms=3.5, label="validation"),
    ]
    return handles


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
    legends: Mapping[str, str] | None = None,
    diverged: Collection[str] = (),
) -> dict[str, dict[str, dict[str, Series]]]:
    """Every panel of `PANELS` for several runs overlaid (one colour per run), in one figure
    of two columns (wide enough to read in a report at page width).

    Returns {panel: {label: {series: (xs, ys)}}}: "train" and "val" for the loss panels,
    the metric's key (``lr``, ``grad_norm``, ...) for the others. A panel no run has data for
    says so instead of staying blank. `legends` and `diverged` as in `loss_curves`.
    """
    out = _check_out(out)
    plt = pyplot()
    cols = 2
    rows = -(-len(PANELS) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.6 * rows + 1.0), squeeze=False)
    records = {label: _records(src) for label, src in runs.items()}
    style = Style.of(records, legends, diverged)
    plotted: dict[str, dict[str, dict[str, Series]]] = {name: {} for name in PANELS}
    alphas: list[float] = []
    for ax, (name, panel) in zip(axes.flat, PANELS.items(), strict=False):
        xs_all = _xs(records.values(), panel.x, panel.keys)
        scale = _x_scale(panel.x, xs_all)
        for label, recs in records.items():
            plotted[name][label] = _draw_panel(ax, panel, recs, scale, style.colors[label], smoothing, alphas)
        if panel.keys == ("loss", "val_loss"):
            _limit_and_mark(ax, plotted[name], style, scale)
        _style_axis(ax, panel.x, panel.ylabel, scale)
        ax.set_title(panel.title, fontsize=11)
        if panel.log_y and xs_all:
            ax.set_yscale("log")
        if not xs_all:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
    for ax in list(axes.flat)[len(PANELS) :]:
        ax.set_visible(False)
    handles = _legend_handles(style, records, alphas)
    height = fig.get_figheight()
    head = 0.4 if title else 0.05  # inches above the legend
    if title:
        fig.suptitle(title, y=1 - 0.08 / height, va="top", fontsize=13)
    ncol = min(len(handles), 4)
    anchor = (0.5, 1 - head / height)
    fig.legend(
        handles=handles, loc="upper center", bbox_to_anchor=anchor, ncol=ncol, fontsize=10, frameon=False
    )
    legend_height = 0.25 * -(-len(handles) // ncol) + 0.05
    fig.tight_layout(rect=(0, 0, 1, 1 - (head + legend_height) / height))
    with replacing(out) as tmp:  # a full disk leaves no half-written picture
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return plotted


def _draw_panel(
    ax: Any,
    panel: Panel,
    recs: Sequence[Mapping[str, Any]],
    scale: float,
    color: str,
    smoothing: float,
    alphas: list[float],
) -> dict[str, Series]:
    """One run in one panel: the loss pair, or the first of the panel's keys the run has."""
    if panel.keys == ("loss", "val_loss"):
        got, alpha = _draw_loss(ax, recs, panel.x, scale, color, smoothing)
        alphas.append(alpha)
        return got
    key = next((k for k in panel.keys if series(recs, panel.x, k)[1]), panel.keys[0])
    px, py = series(recs, panel.x, key)
    if py:
        marker = "o" if key.startswith("val_") else None
        ax.plot([v / scale for v in px], py, color=color, lw=1.3, marker=marker, ms=3.5)
    return {key: (px, py)}
