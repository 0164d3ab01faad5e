"""Metrics and progress: what a run tells the person watching and the files it leaves.

`MetricsLog` appends one JSON record per logged step and per evaluation to
``metrics.jsonl`` (and to TensorBoard when the extra is installed). `ProgressView` shows a
rich progress bar with loss, tokens/s and ETA on a terminal and plain lines otherwise.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, TextIO


class MetricsLog:
    """Append-only JSONL metrics, flushed per record so a killed run loses nothing logged."""

    def __init__(self, path: Path, *, tensorboard: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh: TextIO = open(self.path, "a", encoding="utf-8")
        self.tb = _tensorboard_writer(self.path.parent) if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()
        if self.tb is not None and "step" in record:
            for k, v in clean.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan"/"inf": JSON has no such numbers
    return v


def _tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter when `tensorboard` is installed, else None (it is an optional extra)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a killed run is ignored)."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past `step` (a resumed run will log them again)."""
    p = Path(path)
    if not p.exists():
        return
    keep = [json.dumps(r) for r in read_metrics(p) if r.get("step", 0) <= step]
    p.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def count_records(path: Path) -> int:
    """Complete lines in a metrics.jsonl (what a checkpoint remembers, to cut back to on resume)."""
    p = Path(path)
    return p.read_bytes().count(b"\n") if p.exists() else 0


def truncate_records(path: Path, n: int, *, keep_events: bool = False) -> None:
    """Keep the first `n` records (and, with `keep_events`, every later ``event`` record)."""
    p = Path(path)
    if not p.exists():
        return
    lines = p.read_text(encoding="utf-8").split("\n")[:-1]  # a torn last line (a killed run) goes too
    later = [line for line in lines[n:] if keep_events and '"event"' in line and _is_event(line)]
    p.write_text("".join(line + "\n" for line in lines[:n] + later), encoding="utf-8")


def _is_event(line: str) -> bool:
    try:
        return "event" in json.loads(line)
    except json.JSONDecodeError:
        return False


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressView:
    """A live bar on a terminal, one line per log step elsewhere, nothing when quiet."""

    def __init__(self, total: float, unit: str, *, enabled: bool = True, stream: TextIO | None = None):
        self.total, self.unit, self.enabled = total, unit, enabled
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.bar: Any = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total, info="")
            self.bar.start()

    def update(self, done: float, info: str) -> None:
        if self.live:
            self.bar.update(self.task, completed=min(done, self.total), info=info)

    def line(self, text: str) -> None:
        """A message that stays (a log line when plain, printed above the bar when live)."""
        if not self.enabled:
            return
        if self.live:
            self.bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.live:
            self.bar.stop()
