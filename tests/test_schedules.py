"""Schedules: warm-up is monotone, cosine ends at the minimum, the WSD plateau is flat."""

from __future__ import annotations

import pytest

from steplab.config import ScheduleConfig
from steplab.schedules import SCHEDULES, Shape, build_schedule, cosine, inv_sqrt, linear, warmup, wsd

S = Shape(warmup_steps=10, min_ratio=0.1, decay_fraction=0.2)


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_warmup_is_monotone_and_positive(name: str) -> None:
    fn = SCHEDULES[name]
    values = [fn(step, step / 1000, S) for step in range(11)]
    assert all(v > 0 for v in values)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
    assert values[10] == pytest.approx(fn(10, 0.01, S))


def test_warmup_reaches_peak() -> None:
    assert warmup(9, 10) < 1.0
    assert warmup(10, 10) == 1.0
    assert warmup(0, 0) == 1.0


def test_cosine_ends_at_minimum_and_decreases() -> None:
    assert cosine(1000, 1.0, S) == pytest.approx(0.1)
    assert cosine(10, 0.0, S) == pytest.approx(1.0)
    vals = [cosine(s, s / 100, S) for s in range(10, 101)]
    assert all(b <= a + 1e-12 for a, b in zip(vals, vals[1:], strict=False))


@pytest.mark.parametrize("cooldown", ["linear", "1-sqrt"])
def test_wsd_plateau_is_flat_then_cools_to_minimum(cooldown: str) -> None:
    s = Shape(warmup_steps=10, min_ratio=0.0, decay_fraction=0.2, cooldown=cooldown)
    plateau = {wsd(step, step / 100, s) for step in range(10, 81)}
    assert plateau == {1.0}
    assert wsd(90, 0.9, s) < 1.0
    assert wsd(100, 1.0, s) == pytest.approx(0.0)
    cool = [wsd(st, st / 100, s) for st in range(80, 101)]
    assert all(b <= a for a, b in zip(cool, cool[1:], strict=False))


def test_one_minus_sqrt_cools_faster_early() -> None:
    lin = Shape(warmup_steps=0, min_ratio=0.0, decay_fraction=0.5, cooldown="linear")
    sq = Shape(warmup_steps=0, min_ratio=0.0, decay_fraction=0.5, cooldown="1-sqrt")
    assert wsd(60, 0.6, sq) < wsd(60, 0.6, lin)


def test_linear_decays_to_min_and_inv_sqrt_halves_at_4x_warmup() -> None:
    zero = Shape(warmup_steps=10, min_ratio=0.0)
    assert linear(100, 1.0, zero) == pytest.approx(0.0)
    assert linear(50, 0.5, zero) == pytest.approx(0.5)
    assert inv_sqrt(40, 0.4, S) == pytest.approx(0.5)


def test_constant_is_flat_after_warmup() -> None:
    fn = build_schedule(ScheduleConfig(name="constant", warmup_steps=5))
    assert [fn(s, s / 10) for s in range(5, 10)] == [1.0] * 5
