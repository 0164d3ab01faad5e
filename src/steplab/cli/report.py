"""`steplab report`: the command (the work is `steplab.reports.report`)."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass
from pathlib import Path

from steplab.cli.options import Command
from steplab.config import opt


@dataclass(kw_only=True)
class ReportOptions:
    """One self-contained HTML report (and a Markdown twin) of runs."""

    runs: list[str] = opt(MISSING, "run directories", positional=True, flag="--run", metavar="RUN")
    out: str | None = opt(
        None,
        "report path, .html (none: RUN/report.html for one run, ./report.html for several)",
        metavar="FILE",
    )
    title: str | None = opt(None, "report title")
    samples: int = opt(2, "samples per run (0: none)", ge=0)
    sample_tokens: int = opt(200, "tokens per sample", ge=1)
    prompt: str = opt("\n", "text the samples continue")
    seed: int = opt(0, "seed of the first sample (the next ones add 1)")
    device: str = opt("cpu", "device for sampling (cpu, cuda, auto)")
    quiet: bool = opt(False, "print nothing")
    json: bool = opt(False, "print the written paths as JSON")


def cmd_report(opts: ReportOptions) -> int:
    from steplab.reports.report import build_report
    from steplab.reports.runs import load_run

    if opts.out:
        out = Path(opts.out)
    elif len(opts.runs) == 1:
        out = load_run(opts.runs[0]).path / "report.html"
    else:
        out = Path("report.html")
    rep = build_report(
        opts.runs,
        out,
        title=opts.title,
        samples=opts.samples,
        sample_tokens=opts.sample_tokens,
        prompt=opts.prompt,
        seed=opts.seed,
        device=opts.device,
        progress=not opts.quiet,
    )
    if opts.json:
        print(json.dumps({"html": str(rep.html), "markdown": str(rep.markdown)}))
    elif not opts.quiet:
        print(f"wrote {rep.html} and {rep.markdown}")
    return 0


REPORT = Command("report", ReportOptions, cmd_report)
