"""Helpers shared by the benchmarks: run the reference trainer and steplab in fresh processes."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# ../shared/bench/reference_gpt.py beside the repository (or beside its parent, for a git worktree)
REFERENCE = next(
    (p / "shared" / "bench" / "reference_gpt.py" for p in (ROOT.parent, ROOT.parent.parent)
     if (p / "shared" / "bench" / "reference_gpt.py").exists()),
    ROOT.parent / "shared" / "bench" / "reference_gpt.py",
)  # fmt: skip


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


def alternate(
    cfg: Any, other: Callable[[int], float], block: int, warm: int, *, progress: bool = False
) -> tuple[list[float], list[float]]:
    """Train `cfg` with steplab's `fit`, logging every `block` steps, and at each log run
    `other(block)` (which returns its own seconds): the loop and `other` alternate in blocks
    of `block` steps, in one process, so the machine's drift falls on both alike.

    Returns the pairs after the first `warm` blocks: (seconds of each loop block, seconds of
    the `other` block next to it). A loop block is the wall time between two logs minus the
    `other` block run inside it. `cfg.train.max_steps` must allow the blocks wanted.
    """
    import time

    from steplab.loop.fit import fit
    from steplab.loop.hooks import Callback
    from steplab.loop.session import build

    logs: list[float] = []
    others: list[float] = []

    class Alternate(Callback):
        def on_log(self, s: Any, state: Any, record: Any) -> None:
            logs.append(time.perf_counter())
            others.append(other(block))

    cfg.train.log_every = block
    with tempfile.TemporaryDirectory() as tmp:
        fit(build(cfg), run_dir=Path(tmp) / "run", callbacks=[Alternate()], progress=progress)
    loop = [(b - a) - o for a, b, o in zip(logs[:-1], logs[1:], others[:-1], strict=True)][warm:]
    return loop, others[warm : warm + len(loop)]
