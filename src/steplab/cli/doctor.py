"""`steplab doctor`: the command (the work is `steplab.tools.doctor`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from steplab.tools.doctor import diagnose, load_history, report


def cmd_doctor(args: argparse.Namespace) -> int:
    h = load_history(Path(args.run))
    findings = diagnose(h)
    if args.json:
        print(json.dumps({"run": args.run, "findings": [asdict(f) for f in findings]}, indent=1))
    else:
        print(report(h, findings, args.run))
    return 0


def register_cli(sub: Any, commands: dict[str, Any]) -> None:
    p = sub.add_parser("doctor", help="why is a run not converging? findings with evidence and a next step")
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    commands["doctor"] = cmd_doctor
