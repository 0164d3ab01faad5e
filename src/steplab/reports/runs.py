"""Run directories read back: what each run was, how far it got, whether it is still alive.

A run directory describes itself (``run.json``, ``summary.json``, ``config.toml``,
``metrics.jsonl``); `load_run` reads those files and nothing else (through
`steplab.rundir.read_run`, which survives damaged files), so `steplab runs`,
`steplab plot` and `steplab report` work on a copied or archived directory without the
code or the corpus that produced it.

A run killed without a chance to clean up (SIGKILL, out of memory, a lost node) still says
``running`` in its ``run.json``. The training process records its pid, host and start time
there; a ``running`` run whose process is gone is shown as ``interrupted``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError
from steplab.locks import process_alive
from steplab.progress import fmt_duration
from steplab.rundir import RunFiles, finite_number, is_run, read_run

SKIP_DIRS = {"checkpoints", "tb", "__pycache__"}

# --- a run read back -----------------------------------------------------------------------


@dataclass
class Run(RunFiles):
    """One run directory's files, parsed (`steplab.rundir.read_run`), with what the table shows."""

    name: str = ""

    @property
    def status(self) -> str:
        status = _text(self.info.get("status")) or _text(self.summary.get("status")) or "unknown"
        if status == "running" and process_alive(self.info) is False:
            return "interrupted"
        return str(status)

    @property
    def steps(self) -> list[dict[str, Any]]:
        return [r for r in self.records if finite_number(r.get("loss")) is not None]

    @property
    def evals(self) -> list[dict[str, Any]]:
        return [r for r in self.records if finite_number(r.get("val_loss")) is not None]

    def best_eval(self) -> dict[str, Any] | None:
        evals = self.evals
        return min(evals, key=lambda r: r["val_loss"]) if evals else None

    def last(self, key: str) -> Any:
        """The newest value of `key` in the metrics (or in summary.json when no record has it)."""
        for r in reversed(self.records):
            if key in r:
                return r[key]
        return self.summary.get(key)

    def row(self) -> dict[str, Any]:
        """The facts `steplab runs` shows (raw numbers; the table formats them)."""
        best = self.best_eval()
        tps = [
            v for r in self.steps if (v := finite_number(r.get("tokens_per_second"))) is not None and v > 0
        ]
        mem = [
            v
            for r in self.steps
            for k in ("peak_mem_mb", "rss_mb")
            if (v := finite_number(r.get(k))) is not None
        ]
        wall = finite_number(self.last("elapsed_seconds")) or finite_number(self.last("train_seconds"))
        return {
            "name": self.name,
            "path": str(self.path),
            "preset": _text(self.info.get("preset") or self.config.get("preset")),
            "optimizer": _text(self.info.get("optimizer") or _section(self.config, "optim").get("name")),
            "params": _count(self.info.get("params")),
            "steps": _count(self.last("step")),
            "tokens": _count(self.last("tokens")),
            "train_loss": finite_number(self.steps[-1]["loss"]) if self.steps else None,
            "best_val_loss": best["val_loss"] if best else None,
            "best_step": best["step"] if best else None,
            "val_bpb": finite_number(best.get("val_bpb")) if best else None,
            "tokens_per_second": sorted(tps)[len(tps) // 2] if tps else None,  # the median
            "peak_mem_mb": max(mem) if mem else None,
            "train_seconds": finite_number(self.last("train_seconds")),
            "wall_seconds": wall,
            "status": self.status,
            "started": _text(self.info.get("started")),
        }


def _text(v: Any) -> str | None:
    """A string field of a run's files (a damaged one reads as missing)."""
    return v if isinstance(v, str) else None


def _count(v: Any) -> int | None:
    x = finite_number(v)
    return int(x) if x is not None else None


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    sec = config.get(name)
    return sec if isinstance(sec, dict) else {}


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read a run directory; a path that holds no run is a `SteplabError`."""
    files = read_run(path)
    return Run(**vars(files), name=name or files.path.name)


def find_runs(root: str | Path) -> list[Path]:
    """Every run directory at or below `root` (a run's own subdirectories are not searched)."""
    root = Path(root)
    if not root.is_dir():
        raise SteplabError(f"{root}: no such directory")
    if is_run(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and is_run(here):
            found.append(here)
            dirnames.clear()
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
    return sorted(found)


def labels_for(paths: Sequence[Path]) -> list[str]:
    """Short, distinct names for runs: the directory name, with parents added where names clash."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while True:
        labels = ["/".join(ps[-depth:]) for ps in parts]
        if len(set(labels)) == len(labels) or depth >= max(len(ps) for ps in parts):
            return labels
        depth += 1


def load_runs(paths: Sequence[str | Path]) -> list[Run]:
    """Several runs, each named by `labels_for`."""
    ps = [Path(p) for p in paths]
    return [load_run(p, name) for p, name in zip(ps, labels_for(ps), strict=True)]


# --- the table -----------------------------------------------------------------------------


def human(n: float | None, digits: int = 3) -> str:
    """1234567 -> '1.23M' (counts of parameters and tokens)."""
    if n is None:
        return "-"
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.{digits}g}{suffix}"
    return f"{n:g}"


COLUMNS: list[tuple[str, str]] = [
    ("name", "name"),
    ("preset", "preset"),
    ("optimizer", "optimizer"),
    ("params", "params"),
    ("steps", "steps"),
    ("tokens", "tokens"),
    ("best_val_loss", "best val loss"),
    ("val_bpb", "bits/byte"),
    ("wall_seconds", "wall time"),
    ("status", "status"),
]


def format_cell(key: str, v: Any) -> str:
    if v is None:
        return "-"
    if key in ("params", "tokens"):
        return human(v)
    if key in ("best_val_loss", "val_bpb", "train_loss"):
        return f"{v:.4f}"
    if key in ("wall_seconds", "train_seconds"):
        return fmt_duration(v)
    if key == "tokens_per_second":
        return f"{v:,.0f}"
    if key == "peak_mem_mb":
        return f"{v:,.0f} MiB"
    return str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]] = COLUMNS) -> str:
    """A plain aligned text table (numbers right-aligned), readable in a log or a pipe."""
    cells = [[title for _, title in columns]] + [[format_cell(k, r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    numeric = [k not in ("name", "preset", "optimizer", "status") for k, _ in columns]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric, strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


SORT_KEYS = {
    "name": lambda r: r["name"],
    "started": lambda r: r["started"] or "",
    "loss": lambda r: r["best_val_loss"] if r["best_val_loss"] is not None else math.inf,
}
