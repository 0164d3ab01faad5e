"""The step logger: the log cadence, the step record, the console lines and the progress bar.

It owns `TrainConfig.log_every`. On a log step (and the last step) it makes the one
deliberate host sync of the loop (`loss.item()`), builds the record (loss, lr, grad norm,
tokens/s, step seconds, data fraction, update ratio, MFU, memory), hands it to the
callbacks' `on_log` (which may add keys) and writes it. Between log steps it only moves the
progress bar (throttled, with the last known loss: no sync). It also keeps the largest
memory figures seen, for summary.json.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

import torch

from steplab import dist as dist_mod
from steplab.checkpoint import TrainState
from steplab.loop.budget import Budget
from steplab.loop.guard import snapshot, update_ratio
from steplab.loop.hooks import Callback
from steplab.loop.session import Session
from steplab.loop.step import StepResult
from steplab.progress import ProgressView, fmt_duration
from steplab.runtime import memory_mb
from steplab.trackers import MetricsLog


class StepLogger:
    """What the run tells the files (metrics.jsonl through `log`) and the person watching."""

    def __init__(
        self,
        s: Session,
        budget: Budget,
        log: MetricsLog | None,
        callbacks: Sequence[Callback] = (),
        *,
        progress: bool = True,
        stop_on_nonfinite: bool = True,
    ):
        self.s, self.budget, self.log, self.callbacks = s, budget, log, callbacks
        self.every = s.cfg.train.log_every
        self.stop_on_nonfinite = stop_on_nonfinite  # without the guard, a nan logged ends the run
        self.view = ProgressView(budget.view_total, budget.unit, enabled=progress and s.is_main)
        self.data_seconds = 0.0  # host time spent building batches since the last log
        self.last_log = (0, 0.0)  # (step, train_seconds) of the last log
        self.memory: dict[str, float] = {}  # the largest memory figures seen
        if s.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(s.device)  # this run's peak, not the process's

    def start(self, state: TrainState, n_params: int) -> None:
        self.last_log = (state.step, state.train_seconds)
        cfg = self.s.cfg
        self.view.line(
            f"steplab: {n_params / 1e6:.2f}M params, {cfg.optim.name} lr {self.s.peak_lr:g}, "
            f"{self.budget.tokens_per_step} tokens/step, {self.s.device}"
            + (f", resuming at step {state.step}" if state.step else "")
        )

    # --- output ---------------------------------------------------------------------------

    def write(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(record)

    def line(self, text: str) -> None:
        """A line for the console (above the bar on a terminal); nothing when quiet."""
        self.view.line(text)

    def say(self, text: str) -> None:
        """A message that must be seen even without a progress view (signals, the guard)."""
        if self.view.enabled:
            self.view.line(text)
        elif self.s.is_main:
            sys.stderr.write(text + "\n")

    def event(self, record: dict[str, Any], message: str) -> None:
        self.write(record)
        self.say(message)

    # --- the step ---------------------------------------------------------------------------

    def batches_ready(self) -> None:
        self.data_seconds += self.budget.since_step_start()

    def probe(self, state: TrainState) -> list[torch.Tensor] | None:
        """The weights before a step that will be logged (for its update ratio); one model copy."""
        return snapshot(self.s.model) if (state.step + 1) % self.every == 0 else None

    def step(
        self, state: TrainState, out: StepResult, lr: float, probe: list[torch.Tensor] | None, done: bool
    ) -> bool:
        """After step `state.step`: charge its time, log it when due; False to stop (a nan, no guard)."""
        if not (out.applied and (state.step % self.every == 0 or done)):
            self.budget.charge(state)
            if self.view.live:
                self.view.update(self.budget.view_position(state))
            return True
        # host sync: logging steps only (and the mean over ranks under torchrun)
        loss, grad_norm = dist_mod.all_reduce(out.loss).item(), out.grad_norm.item()
        self.budget.charge(state)
        record = self.record(state, loss, lr, grad_norm, probe)
        try:  # callbacks first, so one can add its metrics to the record (noise scale)
            if math.isfinite(loss):
                for cb in self.callbacks:
                    cb.on_log(self.s, state, record)
        finally:
            self.write(record)
        self.view.update(
            self.budget.view_position(state), f"loss {loss:.4f}  {record['tokens_per_second']:,.0f} tok/s"
        )
        self.line(  # on a terminal too: the loss lines stay in the scrollback above the bar
            f"step {state.step}: loss {loss:.4f}  lr {lr:.2e}  grad {grad_norm:.3f}  "
            f"{record['tokens_per_second']:,.0f} tok/s  train {fmt_duration(state.train_seconds)}"
        )
        if not math.isfinite(loss) and self.stop_on_nonfinite:
            self.say(f"loss is {loss} at step {state.step}: the run diverged (try a lower --optim.lr)")
            return False
        return True

    def record(
        self, state: TrainState, loss: float, lr: float, grad_norm: float, probe: list[torch.Tensor] | None
    ) -> dict[str, Any]:
        """The step record: counters, loss, lr, grad norm and the rates over the last interval."""
        steps, secs = state.step - self.last_log[0], state.train_seconds - self.last_log[1]
        tps = steps * self.budget.tokens_per_step / secs if secs > 0 else 0.0
        self.last_log = (state.step, state.train_seconds)
        record: dict[str, Any] = {
            "step": state.step,
            "tokens": state.tokens,
            "train_seconds": round(state.train_seconds, 3),
            "elapsed_seconds": round(self.budget.elapsed(), 3),
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens_per_second": round(tps, 1),
            "step_seconds": secs / max(steps, 1),
            "data_fraction": round(min(1.0, self.data_seconds / secs), 4) if secs > 0 else 0.0,
        }
        self.data_seconds = 0.0
        if probe is not None:
            record["update_ratio"] = update_ratio(self.s.model, probe).item()
        if self.s.peak_flops:
            record["mfu"] = self.s.flops_per_token * tps / self.s.peak_flops
        record.update(self.sample_memory())
        return record

    def sample_memory(self) -> dict[str, float]:
        """The memory fields of a record now; the largest ones seen are kept for the summary."""
        now = memory_mb(self.s.device)
        for k, v in now.items():
            self.memory[k] = max(v, self.memory.get(k, 0.0))
        return now

    def rolled_back(self, state: TrainState) -> None:
        """The guard restored an earlier step: rates restart from there."""
        self.budget.charge(state)
        self.last_log = (state.step, state.train_seconds)

    def finish(self, state: TrainState) -> None:
        """The bar shows where the run ended (100% when the budget was spent), then stops."""
        self.sample_memory()
        if self.view.live:
            self.view.update(self.budget.view_position(state), force=True)
        self.view.close()
