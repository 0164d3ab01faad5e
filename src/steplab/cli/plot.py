"""`steplab plot`: the command (the work is `steplab.reports.plots`)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Literal

from steplab.cli.options import Command
from steplab.config import opt
from steplab.errors import SteplabError

X_AXES = Literal["step", "tokens", "train_seconds", "elapsed_seconds"]  # steplab.reports.plots.X_LABELS


@dataclass(kw_only=True)
class PlotOptions:
    """Loss, learning rate, grad norm and throughput of runs, overlaid (PNG, SVG or PDF)."""

    runs: list[str] = opt(
        MISSING, "run directories (one colour each)", positional=True, flag="--run", metavar="RUN"
    )
    out: str | None = opt(
        None,
        "output file, .png, .svg or .pdf (none: RUN/plots.png for one run, ./plots.png for several)",
        metavar="FILE",
    )
    loss_only: bool = opt(False, "one larger loss figure instead of the dashboard")
    x: X_AXES = opt("step", "x axis of --loss-only")
    smoothing: float = opt(
        0.9, "largest EMA factor of the train curve (runs with few points get less; 0: raw)", ge=0, lt=1
    )
    title: str | None = opt(None, "figure title")
    quiet: bool = opt(False, "print nothing")


def cmd_plot(opts: PlotOptions) -> int:
    from steplab.reports.labels import legends_of
    from steplab.reports.plots import dashboard, loss_curves
    from steplab.reports.runs import load_runs

    runs = load_runs(opts.runs)
    if not any(r.records for r in runs):
        raise SteplabError(
            f"no metrics to plot in {', '.join(opts.runs)} (metrics.jsonl is empty or missing)"
        )
    out = (
        Path(opts.out) if opts.out else (runs[0].path / "plots.png" if len(runs) == 1 else Path("plots.png"))
    )
    sources = {r.name: r.records for r in runs}
    legends, diverged = legends_of(runs)
    if opts.loss_only:
        loss_curves(
            sources,
            out,
            x=opts.x,
            title=opts.title,
            smoothing=opts.smoothing,
            legends=legends,
            diverged=diverged,
        )
    else:
        dashboard(
            sources, out, title=opts.title, smoothing=opts.smoothing, legends=legends, diverged=diverged
        )
    if not opts.quiet:
        print(f"wrote {out}")
    return 0


PLOT = Command("plot", PlotOptions, cmd_plot)
