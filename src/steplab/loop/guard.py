"""The divergence guard: catch a bad step before its update lands, then skip it or roll back.

The rule, explicit and configurable (`GuardConfig`): a step is *flagged* when

- its loss or its gradient norm is not finite, or
- its loss is a spike: ``loss > mean + spike_sigma * std`` and ``loss > mean * (1 + spike_rise)``,
  where ``mean`` and ``std`` are exponentially weighted statistics (decay `spike_decay`) of
  the losses of accepted steps, checked once `spike_warmup` steps were accepted. Flagged
  losses never enter the statistics, so a run of spikes cannot raise its own bar; or
- its loss is above the *ceiling* ``loss_ceiling * ln(V)`` (V: the model's vocabulary), from
  the very first step. ln(V) is the loss of a uniform guess, which a fresh model starts at;
  a loss half as large again means the model has become confidently wrong. This catches a
  run that blows up from the start, before the spike rule has statistics to compare
  against (and after its moving mean has absorbed a slow blow-up).

The check runs inside `train_step` between backward and ``optimizer.step()``, so a flagged
update is never applied. It costs one host-device sync per step (two scalars, one
transfer): nothing on a CPU; on a GPU it stops the host from queueing the next step while
this one runs, which matters for small, launch-bound models. ``--guard.policy off`` keeps
the sync-free loop, where a non-finite loss only stops the run at the next log step.
Under torchrun every rank judges the mean loss over ranks, so all ranks agree.

What happens to a flagged step (`policy`):

- ``stop``: end the run (status ``diverged``) with the evidence.
- ``skip``: drop the update and move on to the next batch; give up after `max_attempts`
  consecutive flagged steps (then the weights themselves are broken: use rollback).
- ``rollback``: drop the update; reload the newest checkpoint at or before the faulty step
  (one older each time the run faults again before it writes a new checkpoint, down to the
  oldest one kept); multiply the learning rate by `lr_factor`; skip the batches from that
  checkpoint up to and including the faulty one (batches are a pure function of their
  index, so this is an offset); re-apply the current config to the restored optimizer
  (`checkpoint.restore`); give up after `max_attempts` rollbacks. The checkpointer keeps
  the newest `max_attempts` checkpoints on disk while the run lasts, whatever
  ``--checkpoint.keep-last`` says, so every attempt has a checkpoint to go back to.

Giving up or stopping ends the run with status ``diverged`` (exit code 1 from the CLI).
The guard's statistics, learning-rate scale and data offset live in ``TrainState.guard``,
so they are checkpointed and a resumed run judges exactly as the uninterrupted one would.
Every event is a record in metrics.jsonl: ``{"step", "event": "guard", "action", "reason", ...}``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from steplab import checkpoint as ckpt
from steplab import dist as dist_mod
from steplab.checkpoint import TrainState
from steplab.config import GuardConfig
from steplab.errors import ConfigError
from steplab.rundir import json_number, truncate_records

if TYPE_CHECKING:
    from steplab.loop.session import Session

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


def ceiling(vocab_size: int, cfg: GuardConfig) -> float:
    """The loss above which a step is flagged from the first step on (inf: the rule is off)."""
    if cfg.loss_ceiling <= 0 or vocab_size < 2:
        return math.inf
    return cfg.loss_ceiling * math.log(vocab_size)


def verdict(
    loss: float, grad_norm: float, st: dict[str, Any], cfg: GuardConfig, *, limit: float = math.inf
) -> tuple[str | None, float]:
    """Why this step is flagged (None: it is fine) and the threshold in force (nan: none yet).

    `limit` is the ceiling (`ceiling`). The threshold reported is the one the loss crossed
    (a spike is named first: it is the more specific finding), else the spike threshold.
    """
    active = st["accepted"] >= cfg.spike_warmup
    threshold = spike_threshold(st["mean"], st["var"], cfg) if active else math.nan
    if not math.isfinite(loss):
        return "non-finite loss", threshold
    if not math.isfinite(grad_norm):
        return "non-finite gradient", threshold
    if active and loss > threshold:
        return "loss spike", threshold
    if loss > limit:  # before the spike rule is active, or once its statistics absorbed a blow-up
        return "loss above the ceiling", limit
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

    def __init__(
        self,
        cfg: GuardConfig,
        state: TrainState,
        *,
        can_rollback: bool,
        vocab_size: int = 0,
        reduce: bool = False,
    ):
        if cfg.policy == "rollback" and not can_rollback:
            raise ConfigError(
                "--guard.policy rollback needs a run directory to keep checkpoints in "
                "(use --guard.policy skip for runs without one)"
            )
        self.cfg = cfg
        self.state = state
        self.limit = ceiling(vocab_size, cfg)
        self.reduce = reduce  # torchrun: judge the mean loss over ranks
        for k, v in DEFAULTS.items():
            state.guard.setdefault(k, v)
        self.flag: Flag | None = None

    @classmethod
    def for_session(cls, s: Session, state: TrainState, run_dir: Path | None) -> Guard | None:
        """The guard of a run (None with ``--guard.policy off``): judging the mean loss over ranks."""
        if s.cfg.guard.policy == "off":
            return None
        return cls(
            s.cfg.guard,
            state,
            can_rollback=run_dir is not None,
            vocab_size=s.cfg.model.vocab_size,
            reduce=s.dist.enabled,
        )

    @property
    def st(self) -> dict[str, Any]:
        return self.state.guard  # re-read: a rollback or resume replaces the state's dict

    def check(self, loss_t: torch.Tensor, grad_norm_t: torch.Tensor) -> bool:
        """True to apply this step's update. One host-device sync (see the module docstring)."""
        if self.reduce:
            loss_t = dist_mod.all_reduce(loss_t)
        loss, grad_norm = torch.stack([loss_t.detach().float(), grad_norm_t.detach().float()]).tolist()
        reason, threshold = verdict(loss, grad_norm, self.st, self.cfg, limit=self.limit)
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
            "flagged_loss": json_number(f.loss),
            "flagged_grad_norm": json_number(f.grad_norm),
            "threshold": json_number(f.threshold),
            "streak": st["streak"],
            "rollbacks": st["rollbacks"],
        }

    def message(self, event: dict[str, Any]) -> str:
        """One line for the person watching: what happened, where, what to do next."""
        reason = event["reason"]
        if reason == "loss above the ceiling":
            reason += f" {event['threshold']:.4g} ({self.cfg.loss_ceiling:g} x ln V, a uniform guess's loss)"
        what = (
            f"{reason} at step {event['step']} "
            f"(loss {_fmt(event['flagged_loss'])}, grad norm {_fmt(event['flagged_grad_norm'])})"
        )
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
        """A checkpoint is being written: the next rollback starts from the newest again."""
        self.st["depth"] = 0

    def handle(
        self, s: Session, run_dir: Path | None, *, report: Callable[[dict[str, Any], str], None]
    ) -> str:
        """Decide on the step just flagged, carry it out, `report` the event; return the action.

        The action is ``skip``, ``rollback`` (the session's model, optimizer and RNGs and
        `self.state` are restored in place), ``stop`` or ``give_up``.
        """
        event = self.decide(self.state.step + 1)
        if event["action"] == "rollback":
            assert run_dir is not None  # checked in __init__
            self.rollback(run_dir, s, event)
        report(event, self.message(event))
        return str(event["action"])

    def rollback(self, run_dir: Path, s: Session, event: dict[str, Any]) -> None:
        """Restore the checkpoint to go back to (into `self.state`, in place).

        `event` (from `decide`) gains where the run went back to, or becomes ``give_up`` when
        no checkpoint is left. The checkpoints after it and the records logged after it are
        dropped (rank 0), except the guard's own events.
        """
        st, state = self.st, self.state
        faulty = state.step  # steps done before the flagged one: its weights are those of this step
        root = ckpt.checkpoint_dir(run_dir)
        candidates = [c for c in reversed(ckpt.list_steps(root)) if c <= faulty]
        if not candidates:
            event["action"] = "give_up"
            event["detail"] = f"no checkpoint at or before step {faulty} to roll back to"
            return
        target = candidates[
            min(st["depth"], len(candidates) - 1)
        ]  # further back each time, while any is left
        if s.is_main:
            for c in ckpt.list_steps(root):  # the abandoned future goes, so a resume cannot pick it up
                if c > target:
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
            model=s.model,
            optimizer=s.optimizer,
            tokenizer=s.data.tokenizer,
            optim_name=s.cfg.optim.name,
        )
        state.__dict__.update(vars(restored))
        state.train_seconds = seconds  # time spent is spent
        for k, v in DEFAULTS.items():
            state.guard.setdefault(k, v)
        state.guard.update(carried)
        if restored.metrics_lines is not None and s.is_main:
            truncate_records(run_dir / "metrics.jsonl", restored.metrics_lines, keep_events=True)
        dist_mod.barrier()
        event.update(
            to_step=target,
            lr_scale=carried["lr_scale"],
            skipped_batches=faulty + 1 - target,
            rollbacks=carried["rollbacks"],
        )


def _fmt(x: float | str) -> str:
    return f"{x:.6g}" if isinstance(x, float) else str(x)


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
