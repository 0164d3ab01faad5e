"""`steplab runs`: the command (the work is `steplab.reports.runs`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from steplab.cli.options import Command
from steplab.config import opt

SORTS = Literal["loss", "name", "started"]  # steplab.reports.runs.SORT_KEYS


@dataclass(kw_only=True)
class RunsOptions:
    """A table of the runs under a directory."""

    dir: str = opt("runs", "directory to search", positional=True, metavar="DIR")
    sort: SORTS = opt("name", "row order")
    json: bool = opt(False, "print JSON (one object per run, raw numbers)")


def cmd_runs(opts: RunsOptions) -> int:
    from steplab.reports.runs import SORT_KEYS, find_runs, format_table, load_run

    root = Path(opts.dir)
    paths = find_runs(root)
    rows = []
    for p in paths:
        rel = p.relative_to(root) if p != root else Path(p.name)
        rows.append(load_run(p, name=str(rel)).row())
    rows.sort(key=SORT_KEYS[opts.sort])
    if opts.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no runs under {root}")
    else:
        print(format_table(rows))
    return 0


RUNS = Command("runs", RunsOptions, cmd_runs)
