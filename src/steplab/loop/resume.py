"""Resuming a run: its newest valid checkpoint back into a fresh session, the log cut back to it.

Every rank reads the same (unsharded) files, so a run saved by N processes resumes on M.
`checkpoint.restore` refuses a checkpoint of another model, tokenizer or optimizer; what
may change on resume (the budget, the schedule, optimizer settings) takes effect, and a
change that makes the learning rate jump is said in one warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from steplab import checkpoint as ckpt
from steplab import dist as dist_mod
from steplab.checkpoint import TrainState
from steplab.config import RunConfig
from steplab.loop.budget import progress_of
from steplab.loop.session import Session
from steplab.rundir import truncate_metrics, truncate_records
from steplab.schedules import build_schedule


def restore_latest(s: Session, run_dir: Path) -> TrainState | None:
    """Load the newest valid checkpoint of `run_dir` into `s`; None when there is none.

    metrics.jsonl goes back to exactly the records that existed when that checkpoint was
    written; a run killed before its first checkpoint starts over (its records are dropped).
    """
    if s.is_main:
        ckpt.remove_partial(run_dir)
    dist_mod.barrier()
    metrics = run_dir / "metrics.jsonl"
    if not ckpt.list_steps(ckpt.checkpoint_dir(run_dir)):
        if s.is_main:
            truncate_records(metrics, 0)
        return None
    path = ckpt.latest(run_dir)
    state = ckpt.restore(
        path, model=s.model, optimizer=s.optimizer, tokenizer=s.data.tokenizer, optim_name=s.cfg.optim.name
    )
    if s.is_main and state.metrics_lines is not None:
        truncate_records(metrics, state.metrics_lines)
    elif s.is_main:
        truncate_metrics(metrics, state.step)
    if s.is_main:
        warn_if_lr_jumps(ckpt.saved_config(path), s, state)
    return state


def lr_now(cfg: RunConfig, state: TrainState) -> float | None:
    """The learning rate `cfg` gives the next step of `state` (None: lr not resolved)."""
    if isinstance(cfg.optim.lr, str):
        return None
    mult = build_schedule(cfg.schedule)(state.step, progress_of(cfg, state))
    return max(0.0, cfg.optim.lr * mult * state.guard.get("lr_scale", 1.0))  # wsd's end: -7e-19


def warn_if_lr_jumps(saved: RunConfig, s: Session, state: TrainState) -> None:
    """Warn when the resumed run's learning rate jumps up from where the run had brought it.

    A progress-based schedule (cosine, wsd, linear) is a function of the fraction of the
    budget spent: a longer budget stretches it. A finished wsd run extended from step 600 to
    700 goes from its end value (0) back up to where the longer schedule stands at step 600,
    without a warm-up. Warned when the rate at least doubles by more than 10% of the peak.
    """
    before, after = lr_now(saved, state), lr_now(s.cfg, state)
    if before is None or after is None or state.step == 0:
        return
    if after <= 2 * before or after - before <= 0.1 * s.peak_lr:
        return
    warnings.warn(
        f"resuming at step {state.step} with another budget or schedule: the learning rate jumps from "
        f"{before:.3g} (where the run's own schedule had brought it) to {after:.3g}, without a warm-up "
        f"({s.cfg.schedule.name} stretched over the new budget); see README, 'Extending a finished run'",
        stacklevel=2,
    )
