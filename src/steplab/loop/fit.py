"""The loop: budget -> learning rate -> batches -> step -> hooks, until the budget is spent.

`fit` says *when*; each component says *how* and owns its section of the config:
`Budget` (the train budgets and the clock), `StepLogger` (log cadence, the step record,
console and progress bar), `Evaluator` (eval cadence, the best, the target), `Checkpointer`
(checkpoint cadence and pruning, what rollback needs kept), `Guard` (the per-step check and
what to do with a flagged step), `Signals` (SIGTERM/SIGINT, agreement across ranks) and
`RunWriter` (run.json, summary.json, metrics.jsonl). `train_step` is the one step
everything calls; the LR finder and the tuner differ from `train` only in their config and
callbacks (`steplab.loop.hooks`), not in a copy of this loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steplab import dist as dist_mod
from steplab.checkpoint import TrainState
from steplab.config import RunConfig
from steplab.loop.budget import Budget, progress_of, tokens_per_step, warn_if_warmup_outlasts_the_run
from steplab.loop.checkpointer import Checkpointer
from steplab.loop.evaluator import Evaluator
from steplab.loop.guard import Guard
from steplab.loop.hooks import Callback, StopTraining
from steplab.loop.logger import StepLogger
from steplab.loop.resume import restore_latest
from steplab.loop.run_writer import RunWriter
from steplab.loop.session import Session, build, resolve
from steplab.loop.signals import Signals, agree
from steplab.loop.step import train_step
from steplab.optim import set_lr
from steplab.rundir import RunDir
from steplab.runtime import resolve_device

__all__ = ["Result", "TrainState", "fit", "progress_of", "tokens_per_step", "train"]


@dataclass
class Result:
    state: TrainState
    status: str  # finished | target | interrupted | stopped | diverged
    final: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None


def fit(
    s: Session,
    *,
    run_dir: Path | None = None,
    state: TrainState | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> Result:
    """Train until the budget is spent (or a target, a signal, the guard or a callback stops the run)."""
    state = state or TrainState()
    guard = Guard.for_session(s, state, run_dir)
    budget = Budget(s.cfg, state)
    writer = RunWriter(s, run_dir)
    logger = StepLogger(s, budget, writer.log, callbacks, progress=progress, stop_on_nonfinite=guard is None)
    saver = Checkpointer(s, run_dir, on_save=guard.note_checkpoint if guard else None)
    evaluator = Evaluator(s, budget, logger, saver, callbacks)
    options: dict[str, Any] = {"grad_clip": s.cfg.optim.grad_clip, "no_sync": s.no_sync}
    options["check"] = guard.check if guard else None  # the guard's verdict before the update lands
    writer.start()
    logger.start(state, writer.params)
    status, final = "finished", {}
    try:
        with Signals() as signals:
            saver.ensure_rollback_target(state)
            while not budget.done(state):
                budget.start_step()
                mult = s.schedule(state.step, budget.progress(state)) * state.guard.get("lr_scale", 1.0)
                lr = s.peak_lr * mult
                set_lr(s.optimizer, lr)
                batches = s.micro_batches(state.step + state.guard.get("data_offset", 0))
                logger.batches_ready()
                probe = logger.probe(state)
                out = train_step(s.step_model, s.optimizer, batches, amp=s.amp(), **options)
                if guard is not None and not out.applied:  # flagged: skip, roll back or stop
                    action = guard.handle(s, run_dir, report=logger.event)
                    if action == "rollback":
                        saver.forget()
                        logger.rolled_back(state)
                        continue
                    if action != "skip":
                        status = "diverged"
                        break
                budget.advance(state)
                done = budget.done(state)
                if not logger.step(state, out, lr, probe, done):
                    status = "diverged"
                    break
                agree(s, state, signals)
                if evaluator.due(state.step) and not done:
                    result = evaluator.run(state)
                    if evaluator.reached_target(result):
                        status, final = "target", result
                        break
                if saver.due(state.step) and not done:
                    saver.save(state)
                if signals.received is not None:
                    status = "interrupted"
                    saver.save(state)
                    logger.say(signals.message(state.step, run_dir))
                    break
            if status == "finished":
                final = evaluator.run(state, final=True)
                status = evaluator.verdict(final)
            if status in ("finished", "target") and not budget.spent_at_start:
                saver.save(state, final=True)
    except StopTraining:
        status = "stopped"
        saver.save(state)
    except BaseException as e:  # record how the run ended, then let the error through
        writer.crashed(e)
        raise
    finally:
        logger.finish(state)
        writer.close()
    writer.finish(status, state, final, logger.memory)
    return Result(state=state, status=status, final=final, run_dir=run_dir)


def train(
    cfg: RunConfig,
    run_dir: Path | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> Result:
    """Build a session from `cfg` and train it; the Python API behind `steplab train`.

    `cfg` gets the checks the command line gives it, before anything is touched; the run
    directory is then checked and locked (rank 0): a second writer is refused.
    """
    resolve(cfg)
    info = dist_mod.init_from_env(resolve_device(cfg.train.device).type)  # before anything that may use it
    run = RunDir(run_dir) if run_dir is not None else None
    if run is not None and info.is_main:
        run.open(resume=resume, overwrite=overwrite)  # checks and locks; an earlier run is untouched
    elif run is not None:
        run.check(resume=resume, overwrite=overwrite)
    try:
        return _train(
            cfg, run_dir, resume=resume, overwrite=overwrite, callbacks=callbacks, progress=progress
        )
    finally:
        if run is not None:
            run.close()


def _train(
    cfg: RunConfig,
    run_dir: Path | None,
    *,
    resume: bool,
    overwrite: bool,
    callbacks: Sequence[Callback],
    progress: bool,
) -> Result:
    if run_dir is not None:
        run_dir = Path(run_dir)
    s = build(cfg)  # a bad corpus or config fails here, before the run directory is touched
    if s.is_main:
        warn_if_warmup_outlasts_the_run(cfg)
    if cfg.train.noise_scale_every:  # the online gradient-noise-scale meter
        from steplab.loop.noise_scale import meter_callbacks

        callbacks = [*callbacks, *meter_callbacks(cfg)]
    state = restore_latest(s, run_dir) if (resume and run_dir is not None) else None
    if run_dir is not None:
        if s.is_main:
            RunDir(run_dir).prepare(resume=resume, overwrite=overwrite)
        dist_mod.barrier()
    try:
        return fit(s, run_dir=run_dir, state=state, callbacks=callbacks, progress=progress)
    finally:
        dist_mod.shutdown()
