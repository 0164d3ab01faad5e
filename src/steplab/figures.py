"""Plotting primitives shared by the tools and the reports: headless pyplot, smoothing, colours.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a
headless machine and `import steplab` stays light.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any

# matplotlib's tab10 without its grey (grey keys the line styles in legends): distinct hues,
# readable on white.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
LAG_FRACTION = 0.05  # the smoothed curve may lag by at most this share of its points


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def smooth(values: Sequence[float], alpha: float = 0.9) -> list[float]:
    """Bias-corrected exponential moving average (the smoothed train curve)."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = alpha * avg + (1 - alpha) * v
        out.append(avg / (1 - alpha ** (i + 1)))
    return out


def smoothing_for(alpha: float, n: int, lag_fraction: float = LAG_FRACTION) -> float:
    """The EMA factor to draw `n` points with: at most `alpha`, and with a time constant
    1/(1-a) of at most `lag_fraction` of the points, so a short run's curve does not trail
    far behind its loss (20 log points: no smoothing; 100: 0.8; 1000: `alpha`)."""
    tau = lag_fraction * n
    if tau <= 1.0:
        return 0.0
    return min(alpha, 1.0 - 1.0 / tau)


def colors_for(labels: Iterable[str]) -> dict[str, str]:
    """A colour per label that depends on the label, not on its position or on the order the
    runs were given: the same run or variant has the same colour in every figure. When two
    labels of one figure want the same colour, the later one in alphabetical order takes the
    next free one (so a label keeps its colour in every figure where it does not collide)."""
    out: dict[str, str] = {}
    used: set[int] = set()
    for label in sorted(set(labels)):
        slot = int(hashlib.sha256(label.encode("utf-8")).hexdigest(), 16) % len(PALETTE)
        if len(used) < len(PALETTE):
            while slot in used:
                slot = (slot + 1) % len(PALETTE)
        used.add(slot)
        out[label] = PALETTE[slot]
    return out


def sane_limits(curves: Iterable[Sequence[float]], *, pad: float = 0.05) -> tuple[float, float] | None:
    """y limits that show every curve that learns, clipping what blows up: from the lowest
    value to the highest starting value (the first point of each curve) with some margin.
    A diverging curve leaves the top of the axes instead of squashing the others flat."""
    lows, starts, highs = [], [], []
    for ys in curves:
        finite = [y for y in ys if math.isfinite(y)]
        if not finite:
            continue
        lows.append(min(finite))
        starts.append(finite[0])
        highs.append(max(finite))
    if not lows:
        return None
    low, high = min(lows), min(max(highs), max(starts))
    if high <= low:
        high = max(highs) if max(highs) > low else low + 1.0
    span = high - low
    return low - pad * span, high + pad * span
