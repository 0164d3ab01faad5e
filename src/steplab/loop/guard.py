"""The divergence guard: catch a bad step before its update lands, then skip it or roll back.

The rule, explicit and configurable (`GuardConfig`): a step is *flagged* when

- its loss or its gradient norm is not finite, or
- its loss is a spike: ``loss > mean + spike_sigma * std`` and ``loss > mean * (1 + spike_rise)``,
  where ``mean`` and ``std`` are exponentially weighted statistics (decay `spike_decay`) of
  the losses of accepted steps, checked once `spike_warmup` steps were accepted. Flagged
  losses never enter the statistics, so a run of spikes cannot raise its own bar.

The check runs inside `train_step` between backward and ``optimizer.step()``, so a flagged
update is never applied. It costs one host-device sync per step (two scalars, one
transfer): nothing on a CPU; on a GPU it stops the host from queueing the next step while
this one runs, which matters for small, launch-bound models. ``--guard.policy off`` keeps
the sync-free loop, where a non-finite loss only stops the run at the next log step.

What happens to a flagged step (`policy`):

- ``stop``: end the run (status ``diverged``) with the evidence.
- ``skip``: drop the update and move on to the next batch; give up after `max_attempts`
  consecutive flagged steps (then the weights themselves are broken: use rollback).
- ``rollback``: drop the update; reload the newest checkpoint at or before the faulty step
  (one older each time the run faults again before it writes a new checkpoint); multiply
  the learning rate by `lr_factor`; skip the batches from that checkpoint up to and
  including the faulty one (batches are a pure function of their index, so this is an
  offset); re-apply the current config to the restored optimizer (`checkpoint.restore`);
  give up after `max_attempts` rollbacks.

The guard's statistics, learning-rate scale and data offset live in ``TrainState.guard``,
so they are checkpointed and a resumed run judges exactly as the uninterrupted one would.
Every event is a record in metrics.jsonl: ``{"step", "event": "guard", "action", "reason", ...}``.

In data-parallel training the loss is per rank; whoever wires the guard into DDP must
all-reduce the verdict so that every rank skips or rolls back together.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from steplab import checkpoint as ckpt
from steplab.checkpoint import TrainState
from steplab.config import GuardConfig
from steplab.errors import ConfigError
from steplab.rundir import truncate_records

DEFAULTS: dict[str, Any] = {
    "mean": 0.0,  # moving mean of accepted losses
    "var": 0.0,  # moving variance of accepted losses
    "accepted": 0,  # accepted steps seen by the statistics
    "streak": 0,  # consecutive flagged steps
    "flagged": 0,  # flagged steps in the whole run
    "rollbacks": 0,  # rollbacks in the whole run
    "depth": 0,  # rollbacks since the last checkpoint was written (how far back the next one goes)
    "lr_scale": 1.0,  # product of lr_factor over the rollbacks
    "data_offset": 0,  # batches skipped: step k trains on batch k + data_offset
}


# --- the rule: pure functions -------------------------------------------------------------


def update_stats(mean: float, var: float, n: int, x: float, decay: float) -> tuple[float, float]:
    """Exponentially weighted mean and variance after seeing `x` (the first value starts them)."""
    if n == 0:
        return x, 0.0
    d = x - mean
    mean += (1 - decay) * d
    var = decay * (var + (1 - decay) * d * d)
    return mean, var


def spike_threshold(mean: float, var: float, cfg: GuardConfig) -> float:
    """The loss above which a step is a spike: both margins must be exceeded."""
    return max(mean + cfg.spike_sigma * math.sqrt(max(var, 0.0)), mean * (1 + cfg.spike_rise))


def verdict(loss: float, grad_norm: float, st: dict[str, Any], cfg: GuardConfig) -> tuple[str | None, float]:
    """Why this step is flagged (None: it is fine) and the spike threshold in force (nan: none yet)."""
    active = st["accepted"] >= cfg.spike_warmup
    threshold = spike_threshold(st["mean"], st["var"], cfg) if active else math.nan
    if not math.isfinite(loss):
        return "non-finite loss", threshold
    if not math.isfinite(grad_norm):
        return "non-finite gradient", threshold
    if active and loss > threshold:
        return "loss spike", threshold
    return None, threshold


# --- the guard in the loop ----------------------------------------------------------------


@dataclass
class Flag:
    reason: str
    loss: float
    grad_norm: float
    threshold: float


class Guard:
    """Per-step check (`check`, passed to `train_step`) and the decision on a flagged step."""

    def __init__(self, cfg: GuardConfig, state: TrainState, *, can_rollback: bool):
        if cfg.policy == "rollback" and not can_rollback:
            raise ConfigError(
                "--guard.policy rollback needs a run directory to keep checkpoints in "
                "(use --guard.policy skip for runs without one)"
            )
        self.cfg = cfg
        self.state = state
        for k, v in DEFAULTS.items():
            state.guard.setdefault(k, v)
        self.flag: Flag | None = None

    @property
    def st(self) -> dict[str, Any]:
        return self.state.guard  # re-read: a rollback or resume replaces the state's dict

    def check(self, loss_t: torch.Tensor, grad_norm_t: torch.Tensor) -> bool:
        """True to apply this step's update. One host-device sync (see the module docstring)."""
        loss, grad_norm = torch.stack([loss_t.detach().float(), grad_norm_t.detach().float()]).tolist()
        reason, threshold = verdict(loss, grad_norm, self.st, self.cfg)
        if reason is None:
            st = self.st
            st["mean"], st["var"] = update_stats(
                st["mean"], st["var"], st["accepted"], loss, self.cfg.spike_decay
            )
            st["accepted"] += 1
            st["streak"] = 0
            self.flag = None
            return True
        self.flag = Flag(reason, loss, grad_norm, threshold)
        return False

    def decide(self, step: int) -> dict[str, Any]:
        """The action for the step just flagged, as the event record to log."""
        assert self.flag is not None
        st, f = self.st, self.flag
        st["streak"] += 1
        st["flagged"] += 1
        action: str = self.cfg.policy
        if action == "skip" and st["streak"] > self.cfg.max_attempts:
            action = "give_up"
        if action == "rollback" and st["rollbacks"] >= self.cfg.max_attempts:
            action = "give_up"
        return {
            "step": step,
            "event": "guard",
            "action": action,
            "reason": f.reason,
            "flagged_loss": _num(f.loss),
            "flagged_grad_norm": _num(f.grad_norm),
            "threshold": _num(f.threshold),
            "streak": st["streak"],
            "rollbacks": st["rollbacks"],
        }

    def message(self, event: dict[str, Any]) -> str:
        """One line for the person watching: what happened, where, what to do next."""
        what = f"{event['reason']} at step {event['step']} (loss {event['flagged_loss']}, grad norm {event['flagged_grad_norm']})"
        if event["action"] == "give_up":
            tried = (
                f"{self.st['rollbacks']} rollbacks"
                if self.cfg.policy == "rollback"
                else f"{event['streak'] - 1} consecutive skipped steps"
            )
            return (
                f"divergence guard gave up: {what} after {tried}; lower --optim.lr, or run "
                "`steplab doctor RUN` for the evidence"
            )
        if event["action"] == "stop":
            return (
                f"divergence guard stopped the run: {what}; lower --optim.lr or try --guard.policy rollback"
            )
        if event["action"] == "rollback":
            return (
                f"divergence guard: {what}; rolled back to step {event.get('to_step')}, "
                f"lr x{event.get('lr_scale', 1.0):g}, skipping {event.get('skipped_batches')} batches"
            )
        return f"divergence guard: {what}; skipped that batch"

    def note_checkpoint(self) -> None:
        """A checkpoint was written after the last rollback: the next one starts from the newest again."""
        self.st["depth"] = 0

    def rollback(
        self,
        run_dir: Path,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        tokenizer: Any,
        optim_name: str,
        event: dict[str, Any],
    ) -> bool:
        """Restore the checkpoint to go back to (into `self.state`, in place); False when none is left.

        `event` (from `decide`) gains where the run went back to. The records logged after
        that checkpoint are dropped from metrics.jsonl, except the guard's own events.
        """
        st, state = self.st, self.state
        faulty = state.step  # steps done before the flagged one: its weights are those of this step
        candidates = [c for c in reversed(ckpt.list_steps(ckpt.checkpoint_dir(run_dir))) if c <= faulty]
        if st["depth"] >= len(candidates):
            event["action"] = "give_up"
            event["detail"] = f"no checkpoint at or before step {faulty} left to roll back to"
            return False
        target = candidates[st["depth"]]
        root = ckpt.checkpoint_dir(run_dir)
        for c in ckpt.list_steps(root):  # the abandoned future goes, so a resume cannot pick it up
            if c > target:
                import shutil

                shutil.rmtree(root / f"{ckpt.PREFIX}{c:08d}", ignore_errors=True)
        carried = {
            "flagged": st["flagged"],
            "rollbacks": st["rollbacks"] + 1,
            "depth": st["depth"] + 1,
            "lr_scale": st["lr_scale"] * self.cfg.lr_factor,
            # step `target` must train on the batch after the faulty one
            "data_offset": faulty + st["data_offset"] + 1 - target,
            "streak": 0,
        }
        seconds = state.train_seconds
        restored = ckpt.restore(
            root / f"{ckpt.PREFIX}{target:08d}",
            model=model,
            optimizer=optimizer,
            tokenizer=tokenizer,
            optim_name=optim_name,
        )
        state.__dict__.update(vars(restored))
        state.train_seconds = seconds  # time spent is spent
        for k, v in DEFAULTS.items():
            state.guard.setdefault(k, v)
        state.guard.update(carried)
        if restored.metrics_lines is not None:
            truncate_records(run_dir / "metrics.jsonl", restored.metrics_lines, keep_events=True)
        event.update(
            to_step=target,
            lr_scale=carried["lr_scale"],
            skipped_batches=faulty + 1 - target,
            rollbacks=carried["rollbacks"],
        )
        return True


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)


# --- update size: how far a step moves the weights -----------------------------------------


def snapshot(model: nn.Module) -> list[torch.Tensor]:
    """A copy of the parameters before a step (taken on log steps only: it costs one model copy)."""
    return [p.detach().clone() for p in model.parameters()]


def update_ratio(model: nn.Module, before: list[torch.Tensor]) -> torch.Tensor:
    """||w_after - w_before|| / ||w_before|| over all parameters, on the device (no sync here).

    About 1e-3 per step is healthy for Adam-type optimizers; 1e-5 and below means the learning
    rate barely moves the weights, 1e-1 and above that it shakes them.
    """
    params = [p.detach() for p in model.parameters()]
    deltas = torch._foreach_sub(params, before)
    num = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(deltas)))
    den = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(before)))
    return num / den.clamp_min(1e-12)
