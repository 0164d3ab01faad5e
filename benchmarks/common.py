"""Helpers shared by the benchmarks: run the reference trainer and steplab in fresh processes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "bench" / "reference_gpt.py"


def reference(*args: str, timeout: float = 1800) -> list[dict[str, Any]]:
    """Run ../shared/bench/reference_gpt.py as it is; return its JSON lines."""
    if not REFERENCE.exists():
        raise SystemExit(f"reference trainer not found at {REFERENCE}")
    out = subprocess.run(
        [sys.executable, str(REFERENCE), *args], capture_output=True, text=True, timeout=timeout, check=True
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def steplab(*args: str, timeout: float = 1800) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `steplab train ARGS` in a fresh process; return (summary.json, metrics records)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        cmd = [
            sys.executable,
            "-m",
            "steplab",
            "train",
            "--quiet",
            "--train.tensorboard",
            "false",
            "--run-dir",
            str(run),
            *args,
        ]
        subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True, env=env)
        summary = json.loads((run / "summary.json").read_text())
        records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
