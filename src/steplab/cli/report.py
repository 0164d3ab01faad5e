"""`steplab report`: the command (the work is `steplab.reports.report`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from steplab.reports.report import build_report
from steplab.reports.runs import load_run


def cmd_report(args: argparse.Namespace) -> int:
    if args.out:
        out = Path(args.out)
    elif len(args.runs) == 1:
        out = load_run(args.runs[0]).path / "report.html"
    else:
        out = Path("report.html")
    rep = build_report(
        args.runs,
        out,
        title=args.title,
        samples=args.samples,
        sample_tokens=args.sample_tokens,
        prompt=args.prompt,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    if args.json:
        print(json.dumps({"html": str(rep.html), "markdown": str(rep.markdown)}))
    elif not args.quiet:
        print(f"wrote {rep.html} and {rep.markdown}")
    return 0


def register_cli(sub: Any, commands: dict[str, Any]) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report (and a Markdown twin) of runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")
    p.add_argument(
        "--out", default=None, help="report path, .html (default: RUN/report.html for one run, ./report.html)"
    )
    p.add_argument("--title", default=None, help="report title")
    p.add_argument("--samples", type=int, default=2, help="samples per run (0: none)")
    p.add_argument("--sample-tokens", type=int, default=200, help="tokens per sample")
    p.add_argument("--prompt", default="\n", help="text the samples continue (default: a newline)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first sample (the next ones add 1)")
    p.add_argument("--device", default="cpu", help="device for sampling (cpu, cuda, auto)")
    p.add_argument("--quiet", action="store_true", help="print nothing")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    commands["report"] = cmd_report
