"""The budget of `steplab auto`: wall time on this machine, or training FLOPs.

A wall-time budget is spent by everything the command does: tokenizing, measuring, the
proxy runs, the final training, its evaluation and the report. A FLOP budget counts
training FLOPs only (`flops_per_token x tokens`, evaluation excluded, as compute-optimal
scaling papers count them), and the wall time is whatever the device needs.

`Clock` carries the spending across a kill and `--resume`: the state file records what was
spent before, the clock adds what this process spends.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from steplab.errors import ConfigError

UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, flag: str = "--budget") -> float:
    """'300s', '10m', '2h', '1d', '1.5h' or a plain number of seconds -> seconds."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in ("", *UNITS):
        raise ConfigError(f"{flag} must be a duration like 300s, 10m, 2h or 1d (got {text!r})")
    seconds = float(m.group(1)) * UNITS.get(m.group(2), 1.0)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{flag} must be > 0 (got {text!r})")
    return seconds


def parse_flops(text: str, flag: str = "--budget-flops") -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{flag} must be a number of FLOPs like 1e15 (got {text!r})") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{flag} must be > 0 (got {text!r})")
    return value


@dataclass(frozen=True)
class Budget:
    """What `auto` may spend: `total` seconds (kind "seconds") or training FLOPs (kind "flops")."""

    kind: str
    total: float
    search_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.kind not in ("seconds", "flops"):
            raise ValueError(f"budget kind {self.kind!r}")
        if not 0 < self.search_fraction < 1:
            raise ConfigError(f"--search-fraction must be in (0, 1) (got {self.search_fraction:g})")

    @property
    def search(self) -> float:
        return self.total * self.search_fraction

    def describe(self) -> str:
        if self.kind == "seconds":
            return f"{fmt_seconds(self.total)} of wall time"
        return f"{self.total:.3g} training FLOPs"


def fmt_seconds(s: float) -> str:
    s = max(0.0, s)
    if s < 120:
        return f"{s:.0f} s"
    if s < 2 * 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 elsewhere): the interpreter's and
    torch's start-up are part of the wall time a user waits for."""
    try:
        import os

        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


class Clock:
    """Seconds and FLOPs spent, this process's wall time added to what earlier processes spent."""

    def __init__(self, budget: Budget, *, spent_seconds: float = 0.0, spent_flops: float = 0.0):
        self.budget = budget
        self.before = spent_seconds
        self.flops = spent_flops
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def spent(self) -> float:
        """Spent, in the budget's unit."""
        return self.seconds if self.budget.kind == "seconds" else self.flops

    def remaining(self) -> float:
        return self.budget.total - self.spent()

    def search_left(self) -> float:
        return self.budget.search - self.spent()

    def fraction(self) -> float:
        return min(1.0, self.spent() / self.budget.total)
