"""One trial: the base config with the trial's values, trained by `steplab.loop.fit.train` in
its own run directory, each evaluation reported to Optuna for pruning.

A trial that diverges is pruned with ``status = diverged`` (the sampler learns the region is
bad), never recorded as a completed result: the run's own status says so, or its loss is not
finite, or it ends far above what predicting every token uniformly gives (``ln V``), like
the lr = 5 trial that once finished "complete" at 9157. A trial that runs out of memory or
raises is recorded as failed; either way the study goes on.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab.config import RunConfig
from steplab.loop.fit import train
from steplab.loop.hooks import Callback
from steplab.loop.session import Session
from steplab.rundir import is_steplab_run
from steplab.tools.tune.space import Param, apply, optuna_module, suggest_params
from steplab.tools.tune.workers import Stopper, worker_id

ABSURD = 1.5  # a loss above this many times ln(vocabulary size) is a blow-up, not a result


def diverged(loss: Any, vocab_size: int) -> bool:
    """Whether a validation loss says the run blew up: not a number, not finite, or above
    `ABSURD` x the loss of predicting every token uniformly."""
    if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
        return True
    return vocab_size > 1 and loss > ABSURD * math.log(vocab_size)


class ReportToTrial(Callback):
    """Reports every evaluation's validation loss to the trial; raises TrialPruned when told,
    or at once when the loss says the run diverged."""

    def __init__(self, trial: Any):
        self.trial = trial

    def on_eval(self, s: Session, state: Any, record: dict[str, Any]) -> None:
        optuna = optuna_module()
        loss = record["val_loss"]
        if diverged(loss, s.cfg.model.vocab_size):
            self.trial.set_user_attr("status", "diverged")
            raise optuna.TrialPruned(f"diverged: validation loss {loss} at step {state.step}")
        self.trial.report(loss, state.step)
        if self.trial.should_prune():
            self.trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"pruned at step {state.step} (val_loss {loss:.4f})")


class Surplus(Exception):
    """A trial created after the study had all the trials it needs (two workers raced)."""


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


@dataclass
class Objective:
    """Train one trial: base config + the trial's values; return the final validation loss."""

    base: RunConfig
    space: list[Param]
    study_dir: Path
    keep_checkpoints: bool = False
    stopper: Stopper | None = None  # when given, a trial the study does not need is not run

    def __call__(self, trial: Any) -> float:
        optuna = optuna_module()
        trial.set_user_attr("worker", worker_id())
        if self.stopper is not None and self.stopper.surplus(trial):
            trial.set_user_attr("failure", "surplus")
            raise Surplus(f"the study already has --trials {self.stopper.target} trials; not run")
        params = suggest_params(trial, self.space)
        run_dir = self.study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            cfg = apply(self.base, params)
            cfg.checkpoint.keep_best, cfg.checkpoint.every = False, 0  # one checkpoint at the end, at most
            cfg.train.progress = False  # the study's bar stands for the trial's (and its tokenizing)
            result = train(cfg, run_dir, overwrite=True, callbacks=[ReportToTrial(trial)], progress=False)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("status", "out of memory" if _is_oom(e) else "crashed")
            trial.set_user_attr("failure", f"{type(e).__name__}: {e}"[:500])
            raise
        finally:
            if not self.keep_checkpoints and is_steplab_run(run_dir):  # never a folder steplab did not make
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("steps", result.state.step)
        if result.status == "interrupted":  # SIGINT/SIGTERM: stop, and run this trial again next time
            trial.set_user_attr("failure", "interrupted")
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            trial.study.stop()
            raise KeyboardInterrupt
        val = result.final.get("val_loss", result.state.best_val_loss)
        if val is None or result.status == "diverged" or diverged(val, cfg.model.vocab_size):
            trial.set_user_attr("status", "diverged")
            raise optuna.TrialPruned(f"diverged at step {result.state.step} (val_loss {val})")
        return float(val)
