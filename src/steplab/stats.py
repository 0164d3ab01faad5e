"""Small statistics for comparing runs over seeds: mean and spread, Welch's t-test.

The test itself is SciPy's (`scipy.stats.ttest_ind` with ``equal_var=False``); this module
only adds what a comparison table needs around it: the difference of means with its
confidence interval (Welch-Satterthwaite degrees of freedom), and no test below two values
per side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


def mean_std(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance t-test of mean(a) - mean(b)."""

    t: float
    df: float
    p: float  # two-sided
    diff: float  # mean(a) - mean(b)
    low: float  # the confidence interval of `diff`
    high: float
    level: float  # of the interval, e.g. 0.95


def welch_t_test(a: Sequence[float], b: Sequence[float], *, level: float = 0.95) -> Welch | None:
    """Welch's t-test and the `level` confidence interval of the difference of means;
    None below two values per side (no variance to test with)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    diff = sum(a) / len(a) - sum(b) / len(b)
    if mean_std(a)[1] == 0.0 and mean_std(b)[1] == 0.0:  # scipy returns nan here; the answer is known
        return Welch(
            math.copysign(math.inf, diff) if diff else 0.0,
            float(len(a) + len(b) - 2),
            0.0 if diff else 1.0,
            diff,
            diff,
            diff,
            level,
        )
    res = stats.ttest_ind(a, b, equal_var=False)
    ci = res.confidence_interval(confidence_level=level)
    return Welch(
        float(res.statistic), float(res.df), float(res.pvalue), diff, float(ci.low), float(ci.high), level
    )
