"""`steplab runs`: the command (the work is `steplab.reports.runs`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from steplab.reports.runs import SORT_KEYS, find_runs, format_table, load_run


def cmd_runs(args: argparse.Namespace) -> int:
    root = Path(args.dir)
    paths = find_runs(root)
    rows = []
    for p in paths:
        rel = p.relative_to(root) if p != root else Path(p.name)
        rows.append(load_run(p, name=str(rel)).row())
    rows.sort(key=SORT_KEYS[args.sort])
    if args.json:
        print(json.dumps(rows, indent=1))
    elif not rows:
        print(f"no runs under {root}")
    else:
        print(format_table(rows))
    return 0


def register_cli(sub: Any, commands: dict[str, Any]) -> None:
    p = sub.add_parser("runs", help="a table of the runs under a directory")
    p.add_argument("dir", nargs="?", default="runs", help="directory to search (default: runs)")
    p.add_argument("--sort", choices=sorted(SORT_KEYS), default="name", help="row order (default: name)")
    p.add_argument("--json", action="store_true", help="print JSON (one object per run, raw numbers)")
    commands["runs"] = cmd_runs
