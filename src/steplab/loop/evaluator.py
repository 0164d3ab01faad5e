"""The evaluator: when to measure validation loss, the record it leaves, and the best so far.

It owns `EvalConfig` (every N steps; 0: only at the end) and the target loss of
`TrainConfig.target_loss`. An evaluation that improves on the best keeps its checkpoint
(through the checkpointer) and every evaluation reaches the callbacks' `on_eval` (the
tuner's pruner, compare's bookkeeping).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from steplab.checkpoint import TrainState
from steplab.loop.budget import Budget
from steplab.loop.checkpointer import Checkpointer
from steplab.loop.guard import ceiling
from steplab.loop.hooks import Callback
from steplab.loop.logger import StepLogger
from steplab.loop.session import Session, evaluate
from steplab.progress import fmt_duration


class Evaluator:
    """Periodic and final evaluation (`EvalConfig`), the best validation loss, the target."""

    def __init__(
        self,
        s: Session,
        budget: Budget,
        logger: StepLogger,
        checkpointer: Checkpointer,
        callbacks: Sequence[Callback] = (),
    ):
        self.s, self.budget, self.logger, self.checkpointer = s, budget, logger, checkpointer
        self.every, self.target = s.cfg.eval.every, s.cfg.train.target_loss
        self.callbacks = callbacks

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def run(self, state: TrainState, *, final: bool = False) -> dict[str, float]:
        """Evaluate now; log the record (not again for a finished run resumed) and return the metrics."""
        if self.s.device.type == "cuda":
            torch.cuda.synchronize()
        result = evaluate(self.s)
        record = {
            "step": state.step,
            "tokens": state.tokens,
            "train_seconds": round(state.train_seconds, 3),
            "elapsed_seconds": round(self.budget.elapsed(), 3),
            **result,
        }
        improved = state.best_val_loss is None or result["val_loss"] < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step = result["val_loss"], state.step
        if not (final and self.budget.spent_at_start):
            self.logger.write(record)
        self.logger.sample_memory()
        self.logger.line(
            f"eval step {state.step}: val_loss {result['val_loss']:.4f}  ppl {result['val_ppl']:.2f}  "
            f"bpb {result['val_bpb']:.4f}  (train {fmt_duration(state.train_seconds)})"
        )
        if improved and not final:
            self.checkpointer.save_best(state)
        for cb in self.callbacks:
            cb.on_eval(self.s, state, record)
        return result

    def reached_target(self, result: dict[str, float]) -> bool:
        return self.target is not None and result["val_loss"] <= self.target

    def verdict(self, result: dict[str, float]) -> str:
        """The status of a run that spent its budget: ``diverged`` when its final validation loss
        is not finite or above the guard's ceiling (with the guard off too), else ``finished``."""
        loss, limit = result["val_loss"], ceiling(self.s.cfg.model.vocab_size, self.s.cfg.guard)
        if math.isfinite(loss) and loss <= limit:
            return "finished"
        self.logger.say(
            f"final val_loss {loss:.4g} is above the ceiling {limit:.4g} "
            f"({self.s.cfg.guard.loss_ceiling:g} x ln {self.s.cfg.model.vocab_size}, a uniform guess "
            "scaled by --guard.loss-ceiling): the run diverged (try a lower --optim.lr)"
        )
        return "diverged"
