"""`steplab doctor`: the command (the work is `steplab.tools.doctor`)."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass
from pathlib import Path

from steplab.cli.options import Command
from steplab.config import opt


@dataclass(kw_only=True)
class DoctorOptions:
    """Why is a run not converging? Findings with evidence and a next step."""

    run: str = opt(MISSING, "run directory", positional=True, metavar="RUN")
    json: bool = opt(False, "print the findings as JSON")


def cmd_doctor(opts: DoctorOptions) -> int:
    from steplab.tools.doctor import diagnose, load_history, report

    h = load_history(Path(opts.run))
    findings = diagnose(h)
    if opts.json:
        print(json.dumps({"run": opts.run, "findings": [asdict(f) for f in findings]}, indent=1))
    else:
        print(report(h, findings, opts.run))
    return 0


DOCTOR = Command("doctor", DoctorOptions, cmd_doctor)
