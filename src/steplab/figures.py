"""Plotting primitives shared by the tools and the reports: headless pyplot, smoothing.

matplotlib is imported lazily with the non-interactive Agg backend, so plotting works on a
headless machine and `import steplab` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


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
