"""Progress for the person watching: a rich bar with ETA on a terminal, plain lines elsewhere.

Every command that works for more than a few seconds shows one: `train` (steps), `tune`
(trials), `compare` (runs), `report` (samples), `data prepare` (megabytes tokenized). On a
terminal it is a live bar; in a pipe or a CI log it is plain lines with no control codes
(``label [done/total unit] info  ETA m:ss``), so a log file reads top to bottom.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 seed``, ``2 seeds``, ``0 runs`` (`many` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def eta_seconds(done: float, total: float, elapsed: float, start: float = 0.0) -> float | None:
    """Seconds left at the pace so far (work done since `start` in `elapsed` seconds); None
    before there is a pace to go by."""
    if done <= start or elapsed <= 0 or total <= done:
        return None if total > done else 0.0
    return (total - done) * elapsed / (done - start)


class ProgressView:
    """A live bar on a terminal, plain lines elsewhere, nothing when disabled.

    `label` names the bar (train, compare, tune, lr-find, samples, tokenize): every long
    command shows the same kind of bar with an ETA. Off a terminal, `update` prints a plain
    line only when `plain_every` is set: ``0`` for every update (each one a finished item: a
    run, a trial), ``0.1`` at each tenth of the total (a stream of megabytes). Without it
    (train) the caller's own `line`s are the plain output. On a terminal `update` may be
    called as often as every step: a position change alone reaches the bar at most
    `max_rate` times a second (rich redraws at 10 Hz).
    """

    max_rate = 10.0  # position-only updates forwarded to the live bar per second

    def __init__(
        self,
        total: float,
        unit: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        label: str = "train",
        plain_every: float | None = None,
        start: float = 0.0,
    ):
        self.total, self.unit, self.enabled, self.label = total, unit, enabled, label
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.plain_every = plain_every
        self.start, self.t0 = start, time.perf_counter()
        self._last_plain = start
        self.info = ""  # the text beside the bar, kept for position-only updates
        self.last_update = -1.0
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
            self.task = self.bar.add_task(label, total=total, info="", completed=start)
            self.bar.start()

    def eta(self, done: float) -> str:
        """``ETA m:ss`` at the pace since the view was made, ``ETA -`` before any work is done,
        nothing once all is done."""
        if done >= self.total:
            return ""
        left = eta_seconds(done, self.total, time.perf_counter() - self.t0, self.start)
        return "ETA -" if left is None else f"ETA {fmt_duration(left)}"

    def update(self, done: float, info: str | None = None, *, force: bool = False) -> None:
        """Move to `done`; `info` replaces the text beside it (None: keep the last).

        Live, a new `info` or `force` always goes through and a position change alone is
        throttled (`max_rate`); plain, a line when `plain_every` says one is due.
        """
        self.info = self.info if info is None else info
        if self.live:
            now = time.monotonic()
            if info is None and not force and now - self.last_update < 1.0 / self.max_rate:
                return
            self.last_update = now
            self.bar.update(self.task, completed=min(done, self.total), info=self.info)
        elif self.enabled and self.plain_every is not None and self._plain_due(done):
            self._last_plain = done
            count = f"{done:g}/{self.total:g}" if self.unit != "MB" else f"{done:,.1f}/{self.total:,.1f}"
            print(
                f"{self.label} [{count} {self.unit}] {self.info}  {self.eta(done)}".rstrip(), file=self.stream
            )
            self.stream.flush()

    def _plain_due(self, done: float) -> bool:
        step = (self.plain_every or 0.0) * self.total
        return done >= self.total or done - self._last_plain >= step > 0 or (step == 0 and done > 0)

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


class Spinner:
    """Work whose length is unknown (a tokenizer learning its merges): a spinner with `text` on
    a terminal, the text as one line elsewhere; `stop` says how long it took."""

    def __init__(self, text: str, *, enabled: bool = True, stream: TextIO | None = None):
        self.text, self.enabled = text, enabled
        self.stream = stream or sys.stderr
        self.status: Any = None
        self.t0 = time.perf_counter()

    def start(self) -> Spinner:
        self.t0 = time.perf_counter()
        if not self.enabled:
            return self
        if self.stream.isatty():
            from rich.console import Console

            self.status = Console(file=self.stream).status(self.text)
            self.status.start()
        else:
            print(self.text, file=self.stream, flush=True)
        return self

    def stop(self, done: str | None = None) -> None:
        """End the spinner with a line: `done`, or by default the text and the time it took
        ("" for none)."""
        if not self.enabled:
            return
        if self.status is not None:
            self.status.stop()
            self.status = None
        line = f"{self.text}: done in {time.perf_counter() - self.t0:.1f} s" if done is None else done
        if line:
            print(line, file=self.stream, flush=True)


@contextmanager
def working(text: str, *, enabled: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """`Spinner` around a block."""
    spinner = Spinner(text, enabled=enabled, stream=stream).start()
    try:
        yield
    finally:
        spinner.stop()
