"""The budget: how much of the run is spent, when it is done, and the clock that measures it.

A run stops at whichever of its budgets (`TrainConfig.max_steps`, `max_tokens`,
`max_seconds`) ends first; its *progress* is the largest fraction spent, which also drives
the decay of progress-based schedules (cosine, wsd, linear). Training time is charged step
by step (`start_step` / `charge`), so evaluation and checkpoint writes never eat into a
seconds budget, and it keeps counting across resumes (`TrainState.train_seconds`).
"""

from __future__ import annotations

import time
import warnings

from steplab.checkpoint import TrainState
from steplab.config import RunConfig


def tokens_per_step(cfg: RunConfig) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size


def progress_of(cfg: RunConfig, state: TrainState) -> float:
    """Fraction of the budget spent: the largest over steps, tokens and seconds."""
    t = cfg.train
    parts = [0.0]
    if t.max_steps:
        parts.append(state.step / t.max_steps)
    if t.max_tokens:
        parts.append(state.tokens / t.max_tokens)
    if t.max_seconds:
        parts.append(state.train_seconds / t.max_seconds)
    return max(parts)


def planned_steps(cfg: RunConfig) -> int | None:
    """Steps the run will take when its budget is in steps or tokens (None: only seconds)."""
    t = cfg.train
    limits = [t.max_steps, t.max_tokens // tokens_per_step(cfg) if t.max_tokens else None]
    known = [n for n in limits if n is not None]
    return max(1, min(known)) if known else None


def warn_if_warmup_outlasts_the_run(cfg: RunConfig) -> None:
    """One warning when the warm-up is longer than the run: the peak learning rate is never reached."""
    steps, warmup = planned_steps(cfg), cfg.schedule.warmup_steps
    if steps is not None and warmup > steps:
        warnings.warn(
            f"--schedule.warmup-steps {warmup} is longer than the run ({steps} steps): the learning "
            f"rate never reaches its peak {cfg.optim.lr} (lower the warm-up or raise the budget)",
            stacklevel=3,
        )


class Budget:
    """The run's budgets (`TrainConfig`) and its clock: progress, done, seconds spent."""

    def __init__(self, cfg: RunConfig, state: TrainState):
        self.cfg, self.train = cfg, cfg.train
        self.tokens_per_step = tokens_per_step(cfg)
        self.start_wall = time.perf_counter()
        self.elapsed0 = state.train_seconds  # elapsed_seconds continues across resumes
        self.t0 = self.start_wall
        self.spent_at_start = state.step > 0 and self.done(state)  # a finished run resumed

    def progress(self, state: TrainState) -> float:
        return progress_of(self.cfg, state)

    def done(self, state: TrainState) -> bool:
        return self.progress(state) >= 1.0

    def start_step(self) -> None:
        self.t0 = time.perf_counter()

    def since_step_start(self) -> float:
        return time.perf_counter() - self.t0

    def charge(self, state: TrainState) -> None:
        """Add the time since `start_step` to the training time (once per step)."""
        state.train_seconds += time.perf_counter() - self.t0

    def advance(self, state: TrainState) -> None:
        """One optimizer step done (or skipped by the guard: its batch is used up all the same)."""
        state.step += 1
        state.tokens += self.tokens_per_step

    def elapsed(self) -> float:
        """Wall-clock seconds of the run so far, evaluation and checkpoints included."""
        return self.elapsed0 + time.perf_counter() - self.start_wall

    @property
    def unit(self) -> str:
        """What the progress view counts: steps for a pure step budget, else percent."""
        t = self.train
        return "steps" if t.max_steps and not (t.max_tokens or t.max_seconds) else "%"

    @property
    def view_total(self) -> float:
        return float(self.train.max_steps or 0) if self.unit == "steps" else 100.0

    def view_position(self, state: TrainState) -> float:
        """Where the progress view stands: the step, or the percent spent (capped at the end)."""
        done = state.step if self.unit == "steps" else 100 * self.progress(state)
        return min(float(done), self.view_total)
