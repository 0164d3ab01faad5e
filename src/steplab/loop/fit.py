"""The training step and the loop.

`train_step` is the one step everything calls (train, compare, lr-find, tune): forward and
backward over the micro-batches, clip, optimizer step. It returns device tensors and never
synchronises with the host. `fit` is the loop around it: budget, schedule, logging,
evaluation, checkpoints, callbacks. The LR finder and the tuner differ from `train` only in
their config and callbacks, not in a copy of this loop.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from steplab import checkpoint as ckpt
from steplab import dist as dist_mod
from steplab.checkpoint import TrainState
from steplab.config import RunConfig, dump_toml, to_dict
from steplab.loop.guard import Guard, snapshot, update_ratio
from steplab.loop.hooks import Callback, StopTraining
from steplab.loop.session import Session, build, evaluate
from steplab.loop.step import train_step
from steplab.model import count_params
from steplab.optim import eval_mode, set_lr
from steplab.progress import ProgressView, fmt_duration
from steplab.rundir import RunDir, count_records, truncate_metrics, truncate_records
from steplab.runtime import (
    environment,
    memory_mb,
    resolve_device,
)
from steplab.trackers import MetricsLog

# --- the loop -----------------------------------------------------------------------------


@dataclass
class Result:
    state: TrainState
    status: str  # finished | interrupted | diverged | target
    final: dict[str, float] = field(default_factory=dict)
    run_dir: Path | None = None


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


def tokens_per_step(cfg: RunConfig) -> int:
    return cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size


class _Signals:
    """Turn SIGTERM/SIGINT into a flag the loop checks between steps (preemption, Ctrl-C)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the defaults
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def restore(s: Session, run_dir: Path) -> TrainState:
    """Load the newest valid checkpoint of `run_dir` into the session; return its counters.

    Every rank reads the same (unsharded) files, so a run saved by N processes resumes on M.
    """
    return ckpt.restore(
        ckpt.latest(run_dir),
        model=s.model,
        optimizer=s.optimizer,
        tokenizer=s.data.tokenizer,
        optim_name=s.cfg.optim.name,
    )


def fit(
    s: Session,
    *,
    run_dir: Path | None = None,
    state: TrainState | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> Result:
    """Train until the budget is spent (or a target, a signal or a callback stops the run)."""
    cfg, t = s.cfg, s.cfg.train
    state = state or TrainState()
    guard = Guard(cfg.guard, state, can_rollback=run_dir is not None) if cfg.guard.policy != "off" else None
    log = (
        MetricsLog(
            run_dir / "metrics.jsonl", tensorboard=t.tensorboard, tracker=t.tracker, config=to_dict(cfg)
        )
        if (run_dir and s.is_main)
        else None
    )
    n_params = count_params(s.model)
    if run_dir and s.is_main:
        RunDir(run_dir).write_config(dump_toml(cfg))
        RunDir(run_dir).write_tokenizer(s.data.tokenizer.to_json())
        _write_run_json(run_dir, s, status="running", params=n_params)
    per_step = tokens_per_step(cfg)
    unit = "steps" if t.max_steps and not (t.max_tokens or t.max_seconds) else "%"
    total = float(t.max_steps or 0) if unit == "steps" else 100.0
    view = ProgressView(total, unit, enabled=progress and s.is_main)
    view.line(
        f"steplab: {n_params / 1e6:.2f}M params, {cfg.optim.name} lr {s.peak_lr:g}, "
        f"{per_step} tokens/step, {s.device}" + (f", resuming at step {state.step}" if state.step else "")
    )
    status = "finished"
    start_wall = time.perf_counter()
    elapsed0 = state.train_seconds  # elapsed_seconds continues across resumes
    last_log = (state.step, state.train_seconds)
    final: dict[str, float] = {}
    sync = s.device.type == "cuda"
    already_done = state.step > 0 and progress_of(cfg, state) >= 1.0  # resumed a finished run
    saved_at: int | None = None  # the step last checkpointed (a signal right after `every` saves once)
    data_seconds = 0.0

    def say(text: str) -> None:
        """A message that must be seen even without a progress view (signals, the guard)."""
        if view.enabled:
            view.line(text)
        elif s.is_main:
            sys.stderr.write(text + "\n")

    def checkpoint_now() -> None:
        nonlocal saved_at
        if run_dir is None or saved_at == state.step:
            return
        with eval_mode(s.optimizer):  # a checkpoint holds the weights to evaluate and sample
            # Under torchrun every rank takes part in gathering the full state; rank 0 writes it.
            msd, osd = dist_mod.full_state(s.model, s.optimizer) if s.dist.enabled else (None, None)
            if s.is_main:
                keep = (
                    {state.best_step} if (cfg.checkpoint.keep_best and state.best_step is not None) else set()
                )
                state.metrics_lines = count_records(run_dir / "metrics.jsonl")
                ckpt.save(
                    run_dir,
                    model=s.model,
                    optimizer=s.optimizer,
                    model_state=msd,
                    optim_state=osd,
                    state=state,
                    cfg=cfg,
                    tokenizer=s.data.tokenizer,
                    keep_last=cfg.checkpoint.keep_last,
                    keep=keep,
                )
        saved_at = state.step
        if guard is not None:
            guard.note_checkpoint()

    def run_eval(final_eval: bool = False, record_it: bool = True) -> dict[str, float]:
        if sync:
            torch.cuda.synchronize()
        result = evaluate(s)
        record = {
            "step": state.step,
            "tokens": state.tokens,
            "train_seconds": round(state.train_seconds, 3),
            "elapsed_seconds": round(elapsed0 + time.perf_counter() - start_wall, 3),
            **result,
        }
        improved = state.best_val_loss is None or result["val_loss"] < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step = result["val_loss"], state.step
        if log and record_it:
            log.write(record)
        view.line(
            f"eval step {state.step}: val_loss {result['val_loss']:.4f}  ppl {result['val_ppl']:.2f}  "
            f"bpb {result['val_bpb']:.4f}  (train {fmt_duration(state.train_seconds)})"
        )
        if improved and cfg.checkpoint.keep_best and not final_eval:
            checkpoint_now()  # the best model so far stays on disk whatever comes next
        for cb in callbacks:
            cb.on_eval(s, state, record)
        return result

    guard_check = None
    if guard is not None:  # under torchrun every rank judges the same (mean) loss, so all agree
        guard_check = (
            (lambda loss, gn: guard.check(dist_mod.all_reduce(loss), gn)) if s.dist.enabled else guard.check
        )

    try:
        with _Signals() as signals:
            if guard is not None and cfg.guard.policy == "rollback" and run_dir and s.is_main:
                if not ckpt.list_steps(ckpt.checkpoint_dir(run_dir)):
                    checkpoint_now()  # something to roll back to before the first periodic checkpoint
            while progress_of(cfg, state) < 1.0:
                t0 = time.perf_counter()
                mult = s.schedule(state.step, progress_of(cfg, state))
                lr = s.peak_lr * mult * state.guard.get("lr_scale", 1.0)
                set_lr(s.optimizer, lr)
                batches = s.micro_batches(state.step + state.guard.get("data_offset", 0))
                data_seconds += time.perf_counter() - t0
                probe = snapshot(s.model) if (state.step + 1) % t.log_every == 0 else None
                out = train_step(
                    s.step_model,
                    s.optimizer,
                    batches,
                    grad_clip=cfg.optim.grad_clip,
                    amp=s.amp(),
                    no_sync=s.no_sync,
                    check=guard_check,
                )
                if guard is not None and not out.applied:
                    event = guard.decide(state.step + 1)
                    if event["action"] == "rollback" and run_dir is not None:
                        guard.rollback(
                            run_dir,
                            model=s.model,
                            optimizer=s.optimizer,
                            tokenizer=s.data.tokenizer,
                            optim_name=cfg.optim.name,
                            event=event,
                        )
                        saved_at = None
                    if log:
                        log.write(event)
                    say(guard.message(event))
                    if event["action"] in ("stop", "give_up"):
                        status = "diverged"
                        break
                    if event["action"] == "rollback":
                        state.train_seconds += time.perf_counter() - t0
                        last_log = (state.step, state.train_seconds)
                        continue
                state.step += 1
                state.tokens += per_step
                done = progress_of(cfg, state) >= 1.0
                if (state.step % t.log_every == 0 or done) and out.applied:
                    # host sync: logging steps only (and the mean over ranks under torchrun)
                    loss, grad_norm = dist_mod.all_reduce(out.loss).item(), out.grad_norm.item()
                    state.train_seconds += time.perf_counter() - t0
                    steps, secs = state.step - last_log[0], state.train_seconds - last_log[1]
                    tps = steps * per_step / secs if secs > 0 else 0.0
                    last_log = (state.step, state.train_seconds)
                    record = {
                        "step": state.step,
                        "tokens": state.tokens,
                        "train_seconds": round(state.train_seconds, 3),
                        "elapsed_seconds": round(elapsed0 + time.perf_counter() - start_wall, 3),
                        "loss": loss,
                        "lr": lr,
                        "grad_norm": grad_norm,
                        "tokens_per_second": round(tps, 1),
                        "step_seconds": secs / max(steps, 1),
                        "data_fraction": round(min(1.0, data_seconds / secs), 4) if secs > 0 else 0.0,
                    }
                    data_seconds = 0.0
                    if probe is not None:
                        record["update_ratio"] = update_ratio(s.model, probe).item()
                    if s.peak_flops:
                        record["mfu"] = s.flops_per_token * tps / s.peak_flops
                    record.update(memory_mb(s.device))
                    try:  # callbacks first, so one can add its metrics to the record (noise scale)
                        if math.isfinite(loss):
                            for cb in callbacks:
                                cb.on_log(s, state, record)
                    finally:
                        if log:
                            log.write(record)
                    view.update(
                        state.step if unit == "steps" else 100 * progress_of(cfg, state),
                        f"loss {loss:.4f}  {tps:,.0f} tok/s",
                    )
                    if not view.live:
                        view.line(
                            f"step {state.step}: loss {loss:.4f}  lr {lr:.2e}  grad {grad_norm:.3f}  "
                            f"{tps:,.0f} tok/s  train {fmt_duration(state.train_seconds)}"
                        )
                    if not math.isfinite(loss) and guard is None:
                        status = "diverged"
                        say(f"loss is {loss} at step {state.step}: the run diverged (try a lower --optim.lr)")
                        break
                else:
                    state.train_seconds += time.perf_counter() - t0
                if s.dist.enabled:  # every rank must agree on time spent and on stopping
                    agreed = dist_mod.all_reduce(
                        torch.tensor([state.train_seconds, float(signals.received or 0)], device=s.device),
                        "max",
                    ).tolist()
                    state.train_seconds = agreed[0]
                    signals.received = signals.received or (int(agreed[1]) or None)
                if cfg.eval.every and state.step % cfg.eval.every == 0 and not done:
                    res = run_eval()
                    if t.target_loss is not None and res["val_loss"] <= t.target_loss:
                        final, status = res, "target"
                        break
                if cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0 and not done:
                    checkpoint_now()
                if signals.received is not None:
                    status = "interrupted"
                    name = signal.Signals(signals.received).name
                    checkpoint_now()
                    say(
                        f"{name} received: checkpoint saved at step {state.step}; "
                        f"resume with: steplab train --run-dir {run_dir} --resume"
                        if run_dir
                        else f"{name} received: stopped at step {state.step} (no run directory: nothing saved)"
                    )
                    break
            if status == "finished":
                final = run_eval(final_eval=True, record_it=not already_done)
            if status in ("finished", "target") and not already_done:
                checkpoint_now()
    except StopTraining:
        status = "stopped"
        checkpoint_now()
    except BaseException as e:  # record how the run ended, then let the error through
        if run_dir and s.is_main:
            crashed = "interrupted" if isinstance(e, KeyboardInterrupt) else "crashed"
            with suppress(Exception):  # never mask the error itself
                _write_run_json(run_dir, s, status=crashed, params=n_params)
        raise
    finally:
        view.close()
        if log:
            log.close()
    if run_dir and s.is_main:
        _write_run_json(run_dir, s, status=status, params=n_params)
        summary = {
            "status": status,
            "step": state.step,
            "tokens": state.tokens,
            "train_seconds": state.train_seconds,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step,
            **final,
        }
        RunDir(run_dir).write_summary(summary)
    return Result(state=state, status=status, final=final, run_dir=run_dir)


def _write_run_json(run_dir: Path, s: Session, *, status: str, params: int) -> None:
    rd = RunDir(run_dir)
    extra = {} if "environment" in rd.read_info() else {"environment": environment(s.device)}
    rd.update_info(
        status=status,
        params=params,
        preset=s.cfg.preset,
        optimizer=s.cfg.optim.name,
        seed=s.cfg.train.seed,
        flops_per_token=s.flops_per_token,
        data_meta=s.data.meta,
        **extra,
    )


def train(
    cfg: RunConfig,
    run_dir: Path | None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> Result:
    """Build a session from `cfg` and train it; the Python API behind `steplab train`."""
    dist_mod.init_from_env(resolve_device(cfg.train.device).type)  # before anything that may use it
    if run_dir is not None:
        run_dir = Path(run_dir)
        RunDir(run_dir).check(resume=resume, overwrite=overwrite)
    s = build(cfg)  # a bad corpus or config fails here, before the run directory is touched
    if cfg.train.noise_scale_every:  # the online gradient-noise-scale meter
        from steplab.loop.noise_scale import meter_callbacks

        callbacks = [*callbacks, *meter_callbacks(cfg)]
    state = None
    if resume and run_dir is not None:
        if s.is_main:
            ckpt.remove_partial(run_dir)
        dist_mod.barrier()
    if resume and run_dir is not None and ckpt.list_steps(ckpt.checkpoint_dir(run_dir)):
        state = restore(s, run_dir)
        if s.is_main and state.metrics_lines is not None:  # back to exactly what was logged when saved
            truncate_records(run_dir / "metrics.jsonl", state.metrics_lines)
        elif s.is_main:
            truncate_metrics(run_dir / "metrics.jsonl", state.step)
    elif resume and run_dir is not None and s.is_main:  # killed before its first checkpoint: start over
        truncate_records(run_dir / "metrics.jsonl", 0)
    if run_dir is not None:
        if s.is_main:
            RunDir(run_dir).prepare(resume=resume, overwrite=overwrite)
        dist_mod.barrier()
    try:
        return fit(s, run_dir=run_dir, state=state, callbacks=callbacks, progress=progress)
    finally:
        dist_mod.shutdown()
