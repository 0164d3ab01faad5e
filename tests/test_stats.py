"""Statistics: the incomplete beta and Welch's t-test against tabulated values."""

from __future__ import annotations

import pytest

from steplab.stats import betainc, mean_std, welch_t_test


def test_t_test_matches_tables() -> None:
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)
    # Two-sided 5% critical values of Student's t: df 1 -> 12.706, df 10 -> 2.228.
    assert betainc(0.5, 0.5, 1 / (1 + 12.706**2)) == pytest.approx(0.05, abs=1e-4)
    assert betainc(5.0, 0.5, 10 / (10 + 2.228**2)) == pytest.approx(0.05, abs=1e-4)
    t, df, p = welch_t_test([1.0, 1.1, 0.9, 1.05], [1.5, 1.6, 1.4, 1.55])  # type: ignore[misc]
    assert t < 0 and 5 < df <= 6 and p < 0.001
    assert welch_t_test([1.0], [2.0, 2.1]) is None
    assert welch_t_test([1.0, 1.2], [1.0, 1.2])[2] == pytest.approx(1.0)  # type: ignore[index]


def test_mean_and_sample_std() -> None:
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)
