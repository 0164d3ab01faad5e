"""`steplab plot`: the command (the work is `steplab.reports.plots`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError
from steplab.reports.plots import X_LABELS, dashboard, loss_curves

# --- the command ---------------------------------------------------------------------------


def cmd_plot(args: argparse.Namespace) -> int:
    from steplab.reports.runs import load_runs

    if not 0 <= args.smoothing < 1:
        raise SteplabError(f"--smoothing must be in [0, 1) (got {args.smoothing})")
    runs = load_runs(args.runs)
    if not any(r.records for r in runs):
        raise SteplabError(
            f"no metrics to plot in {', '.join(args.runs)} (metrics.jsonl is empty or missing)"
        )
    out = (
        Path(args.out) if args.out else (runs[0].path / "plots.png" if len(runs) == 1 else Path("plots.png"))
    )
    sources = {r.name: r.records for r in runs}
    if args.loss_only:
        loss_curves(sources, out, x=args.x, title=args.title, smoothing=args.smoothing)
    else:
        dashboard(sources, out, title=args.title, smoothing=args.smoothing)
    if not args.quiet:
        print(f"wrote {out}")
    return 0


def register_cli(sub: Any, commands: dict[str, Any]) -> None:
    p = sub.add_parser("plot", help="loss, learning rate, grad norm and throughput of runs (PNG or SVG)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (overlaid, one colour each)")
    p.add_argument(
        "--out",
        default=None,
        help="output file; .png, .svg or .pdf (default: RUN/plots.png for one run, ./plots.png for several)",
    )
    p.add_argument("--loss-only", action="store_true", help="one larger loss figure instead of the dashboard")
    p.add_argument(
        "--x", choices=list(X_LABELS), default="step", help="x axis of --loss-only (default: step)"
    )
    p.add_argument("--smoothing", type=float, default=0.9, help="EMA factor of the train curve, 0 = raw")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    commands["plot"] = cmd_plot
