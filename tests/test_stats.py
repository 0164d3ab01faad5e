"""Statistics: Welch's t-test (scipy) and the confidence interval of the difference, against
values computed by hand and Student's t tables."""

from __future__ import annotations

import math

import pytest

from steplab.stats import mean_std, welch_t_test

T_975_DF4 = 2.776445  # Student's t, two-sided 5% critical value at 4 degrees of freedom (tables)


def test_welch_matches_hand_computed_values() -> None:
    # a: mean 2.5, var 5/3; b: mean 5, var 20/3 (n = 4 each): se^2 = 25/12, t = -sqrt(3),
    # Welch-Satterthwaite df = (25/12)^2 / ((5/12)^2/3 + (5/3)^2/3) = 75/17.
    w = welch_t_test([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0])
    assert w is not None
    assert w.t == pytest.approx(-math.sqrt(3)) and w.df == pytest.approx(75 / 17)
    assert w.diff == -2.5 and 0.1 < w.p < 0.2


def test_p_and_interval_at_the_tabulated_critical_value() -> None:
    # Equal sizes (3) and variances (1): df = 4, se = sqrt(2/3). A gap of t_crit * se puts p at
    # exactly 0.05 and one end of the 95% interval of the difference at exactly 0.
    gap = T_975_DF4 * math.sqrt(2 / 3)
    w = welch_t_test([gap, gap + 1, gap + 2], [0.0, 1.0, 2.0])
    assert w is not None
    assert w.df == pytest.approx(4.0) and w.t == pytest.approx(T_975_DF4)
    assert w.p == pytest.approx(0.05, abs=1e-6)
    assert w.low == pytest.approx(0.0, abs=1e-6) and w.high == pytest.approx(2 * gap)
    assert w.level == 0.95
    wide = welch_t_test([gap, gap + 1, gap + 2], [0.0, 1.0, 2.0], level=0.99)
    assert wide is not None and wide.low < 0 < wide.high  # not significant at 1%


def test_degenerate_inputs() -> None:
    assert welch_t_test([1.0], [2.0, 2.1]) is None  # one value: no variance to test with
    same = welch_t_test([1.0, 1.2], [1.0, 1.2])
    assert same is not None and same.p == pytest.approx(1.0) and same.low < 0 < same.high
    exact = welch_t_test([1.0, 1.0], [2.0, 2.0])  # no spread at all: scipy says nan, the answer is sure
    assert exact is not None and exact.p == 0.0 and exact.t == -math.inf and exact.low == exact.high == -1.0


def test_mean_and_sample_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
