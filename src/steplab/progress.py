"""Progress for the person watching: a rich bar with ETA on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
from typing import Any, TextIO


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressView:
    """A live bar on a terminal, one line per log step elsewhere, nothing when quiet.

    `label` names the bar (train, compare, tune, lr-find, report): every long command shows
    the same kind of bar with an ETA.
    """

    def __init__(
        self,
        total: float,
        unit: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        label: str = "train",
    ):
        self.total, self.unit, self.enabled, self.label = total, unit, enabled, label
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.bar: Any = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self.task = self.bar.add_task(label, total=total, info="")
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
