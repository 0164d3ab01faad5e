"""Learning-rate schedules: pure functions of the step and the run's progress.

Every schedule returns a multiplier of the peak learning rate. `step` drives the warm-up
(in steps); `progress` in [0, 1] drives the decay. For a step budget `progress` is
``step / max_steps``, so the schedule is a pure function of the step; for a time or token
budget it is the fraction of that budget spent, which lets a 60-second run cool down on time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from steplab.config import ScheduleConfig
from steplab.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Shape:
    warmup_steps: int
    min_ratio: float
    decay_fraction: float = 0.2
    cooldown: str = "linear"


def warmup(step: int, warmup_steps: int) -> float:
    """Linear ramp from 1/(warmup+1) to 1: never exactly zero, so step 0 still learns."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return (step + 1) / (warmup_steps + 1)


def constant(step: int, progress: float, s: Shape) -> float:
    return warmup(step, s.warmup_steps)


def cosine(step: int, progress: float, s: Shape) -> float:
    """Linear warm-up, then half a cosine from 1 to `min_ratio` at progress 1."""
    if step < s.warmup_steps:
        return warmup(step, s.warmup_steps)
    p = min(max(progress, 0.0), 1.0)
    return s.min_ratio + 0.5 * (1.0 + math.cos(math.pi * p)) * (1.0 - s.min_ratio)


def wsd(step: int, progress: float, s: Shape) -> float:
    """Warm-up, a flat plateau, then a cool-down over the last `decay_fraction` of the run."""
    if step < s.warmup_steps:
        return warmup(step, s.warmup_steps)
    start = 1.0 - s.decay_fraction
    p = min(max(progress, 0.0), 1.0)
    if p <= start or s.decay_fraction <= 0:
        return 1.0
    x = (p - start) / s.decay_fraction  # 0 -> 1 through the cool-down
    shape = 1.0 - math.sqrt(x) if s.cooldown == "1-sqrt" else 1.0 - x
    return s.min_ratio + (1.0 - s.min_ratio) * shape


def linear(step: int, progress: float, s: Shape) -> float:
    """Warm-up, then a straight line down to `min_ratio` (0 for linear decay to zero)."""
    if step < s.warmup_steps:
        return warmup(step, s.warmup_steps)
    p = min(max(progress, 0.0), 1.0)
    return s.min_ratio + (1.0 - s.min_ratio) * (1.0 - p)


def inv_sqrt(step: int, progress: float, s: Shape) -> float:
    """Warm-up, then 1/sqrt(step/warmup): the original Transformer schedule, budget-free."""
    if step < s.warmup_steps:
        return warmup(step, s.warmup_steps)
    return math.sqrt(max(s.warmup_steps, 1) / max(step, 1))


ScheduleFn = Callable[[int, float, Shape], float]

SCHEDULES: dict[str, ScheduleFn] = {
    "constant": constant,
    "cosine": cosine,
    "wsd": wsd,
    "linear": linear,
    "inv_sqrt": inv_sqrt,
}


def build_schedule(cfg: ScheduleConfig) -> Callable[[int, float], float]:
    """The configured schedule as `multiplier(step, progress)`."""
    check_name(cfg.name)
    fn = SCHEDULES[cfg.name]
    shape = Shape(
        warmup_steps=cfg.warmup_steps,
        min_ratio=cfg.min_lr_ratio,
        decay_fraction=cfg.decay_fraction,
        cooldown=cfg.cooldown,
    )
    return lambda step, progress: fn(step, progress, shape)


def check_name(name: str) -> None:
    """An unknown schedule is a `ConfigError` that lists the registered ones."""
    if name not in SCHEDULES:
        raise ConfigError(
            f"--schedule.name: unknown schedule {name!r} (valid: {', '.join(sorted(SCHEDULES))})"
        )
