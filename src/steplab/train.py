"""The training step and the loop.

`train_step` is the one step everything calls (train, compare, lr-find, tune): forward and
backward over the micro-batches, clip, optimizer step. It returns device tensors and never
synchronises with the host. `fit` is the loop around it: budget, schedule, logging,
evaluation, checkpoints, callbacks. The LR finder and the tuner differ from `train` only in
their config and callbacks, not in a copy of this loop.
"""

from __future__ import annotations

import json
import math
import signal
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from steplab import checkpoint as ckpt
from steplab.checkpoint import TrainState
from steplab.config import RunConfig, dump_toml
from steplab.data import BatchSampler, TokenData, prepare, val_windows
from steplab.errors import ConfigError, SteplabError
from steplab.evaluate import mean_loss, summarize
from steplab.model import GPT, count_params, flops_per_token, matmul_params
from steplab.optim import build_optimizer, eval_mode, set_lr, train_mode
from steplab.runtime import (
    autocast,
    autocast_dtype,
    configure_threads,
    environment,
    peak_flops,
    resolve_device,
)
from steplab.schedules import build_schedule
from steplab.track import MetricsLog, ProgressView, fmt_duration, truncate_metrics

# --- the step -----------------------------------------------------------------------------


@dataclass
class StepResult:
    loss: torch.Tensor  # mean loss over the micro-batches, on the device
    grad_norm: torch.Tensor  # global gradient norm before clipping, on the device


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    grad_clip: float,
    amp: AbstractContextManager | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
) -> StepResult:
    """One optimizer step over `len(batches)` micro-batches (gradient accumulation).

    `no_sync` (DDP) skips the gradient all-reduce on every micro-batch but the last.
    No host synchronisation happens here: the returned tensors stay on the device.
    """
    n = len(batches)
    total = torch.zeros((), device=batches[0][0].device)
    for i, (x, y) in enumerate(batches):
        sync_ctx = no_sync() if (no_sync is not None and i < n - 1) else nullcontext()
        with sync_ctx:
            with amp or nullcontext():
                _, loss = model(x, y)
            (loss / n).backward()
        total += loss.detach()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=total / n, grad_norm=grad_norm)


# --- the session: everything a run needs, built from the config ----------------------------


@dataclass
class Session:
    """The runtime objects of one run, built from a `RunConfig` by `build`."""

    cfg: RunConfig
    device: torch.device
    data: TokenData
    model: GPT  # the plain model (checkpoints, eval, sampling)
    step_model: nn.Module  # what the step calls: the model, compiled or wrapped for DDP
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int, float], float]
    sampler: BatchSampler
    val: tuple[torch.Tensor, torch.Tensor]
    amp_dtype: torch.dtype | None
    flops_per_token: float
    peak_flops: float | None
    no_sync: Callable[[], AbstractContextManager] | None = None
    is_main: bool = True  # rank 0 alone logs, evaluates and saves

    def amp(self) -> AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of optimizer step `step` (a pure function of seed and step)."""
        k = self.cfg.train.grad_accum
        return [self.sampler.batch_at(step * k + i) for i in range(k)]

    @property
    def peak_lr(self) -> float:
        lr = self.cfg.optim.lr
        if not isinstance(lr, float):
            raise ConfigError("--optim.lr auto must be resolved by the LR finder before training")
        return lr


def build(cfg: RunConfig, *, data: TokenData | None = None, device: torch.device | None = None) -> Session:
    """Tokenize (or reuse the cache), build model, optimizer, schedule and sampler."""
    cfg.validate()
    configure_threads(cfg.train)
    device = device or resolve_device(cfg.train.device)
    data = data or prepare(cfg.data, cfg.tokenizer)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = data.tokenizer.vocab_size
    elif cfg.model.vocab_size < data.tokenizer.vocab_size:
        raise ConfigError(
            f"--model.vocab-size {cfg.model.vocab_size} is smaller than the tokenizer's {data.tokenizer.vocab_size}"
        )
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.optim, device, cfg.model)
    step_model: nn.Module = model
    if cfg.train.compile:
        step_model = torch.compile(model)  # type: ignore[assignment]
    return Session(
        cfg=cfg,
        device=device,
        data=data,
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        schedule=build_schedule(cfg.schedule),
        sampler=BatchSampler(data.train, cfg.model.block_size, cfg.train.batch_size, cfg.train.seed, device),
        val=val_windows(data.val, cfg.model.block_size, cfg.eval.max_windows, cfg.train.seed),
        amp_dtype=autocast_dtype(cfg.train, device),
        flops_per_token=flops_per_token(cfg.model, matmul_params(model)),
        peak_flops=peak_flops(device),
    )


def evaluate(s: Session) -> dict[str, float]:
    with eval_mode(s.optimizer):  # schedule-free optimizers evaluate their averaged weights
        loss = mean_loss(s.model, *s.val, batch_size=s.cfg.eval.batch_size, device=s.device, amp=s.amp())
    return summarize(loss, s.data.bytes_per_token)


# --- the loop -----------------------------------------------------------------------------


class StopTraining(Exception):
    """Raised by a callback to end the run early (the run still finishes cleanly)."""


class Callback:
    """Hooks into the loop; subclasses override what they need."""

    def on_log(self, s: Session, state: TrainState, record: dict[str, Any]) -> None: ...
    def on_eval(self, s: Session, state: TrainState, record: dict[str, Any]) -> None: ...


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


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless told to resume it or start over."""
    run_dir = Path(run_dir)
    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if has_run and not resume and not overwrite:
        raise SteplabError(
            f"run directory {run_dir} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --run-dir"
        )
    if overwrite and not resume and run_dir.exists():
        import shutil

        for child in ("checkpoints", "metrics.jsonl", "tb", "summary.json", "run.json"):
            p = run_dir / child
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def restore(s: Session, run_dir: Path) -> TrainState:
    """Load the newest valid checkpoint of `run_dir` into the session; return its counters."""
    path = ckpt.latest(run_dir)
    loaded = ckpt.load(path)
    ckpt.load_weights(s.model, loaded.weights, path)
    if loaded.tokenizer.to_json() != s.data.tokenizer.to_json():
        raise SteplabError(f"{path}: the checkpoint's tokenizer does not match this run's corpus/tokenizer")
    if loaded.optimizer is not None:
        try:
            s.optimizer.load_state_dict(loaded.optimizer)
        except (ValueError, KeyError, RuntimeError) as e:
            raise SteplabError(
                f"{path}: optimizer state does not match --optim.name {s.cfg.optim.name} ({e})"
            ) from None
        train_mode(s.optimizer)  # saved in eval mode: back to the point it steps from
    if loaded.rng is not None:
        ckpt.set_rng_state(loaded.rng)
    return loaded.state


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
    log = (
        MetricsLog(run_dir / "metrics.jsonl", tensorboard=t.tensorboard) if (run_dir and s.is_main) else None
    )
    n_params = count_params(s.model)
    if run_dir and s.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(dump_toml(cfg))
        (run_dir / "tokenizer.json").write_text(json.dumps(s.data.tokenizer.to_json()))
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

    def checkpoint_now() -> None:
        if run_dir is None or not s.is_main:
            return
        keep = {state.best_step} if (cfg.checkpoint.keep_best and state.best_step is not None) else set()
        with eval_mode(s.optimizer):  # a checkpoint holds the weights to evaluate and sample
            ckpt.save(
                run_dir,
                model=s.model,
                optimizer=s.optimizer,
                state=state,
                cfg=cfg,
                tokenizer=s.data.tokenizer,
                keep_last=cfg.checkpoint.keep_last,
                keep=keep,
            )

    def run_eval(final_eval: bool = False) -> dict[str, float]:
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
        if log:
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

    try:
        with _Signals() as signals:
            while progress_of(cfg, state) < 1.0:
                t0 = time.perf_counter()
                mult = s.schedule(state.step, progress_of(cfg, state))
                lr = s.peak_lr * mult
                set_lr(s.optimizer, lr)
                out = train_step(
                    s.step_model,
                    s.optimizer,
                    s.micro_batches(state.step),
                    grad_clip=cfg.optim.grad_clip,
                    amp=s.amp(),
                    no_sync=s.no_sync,
                )
                state.step += 1
                state.tokens += per_step
                done = progress_of(cfg, state) >= 1.0
                if state.step % t.log_every == 0 or done:
                    loss, grad_norm = out.loss.item(), out.grad_norm.item()  # host sync: logging steps only
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
                    }
                    if s.peak_flops:
                        record["mfu"] = s.flops_per_token * tps / s.peak_flops
                    if s.device.type == "cuda":
                        record["peak_mem_mb"] = torch.cuda.max_memory_allocated(s.device) / 2**20
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
                    if not math.isfinite(loss):
                        status = "diverged"
                        view.line(
                            f"loss is {loss} at step {state.step}: the run diverged (try a lower --optim.lr)"
                        )
                        break
                    for cb in callbacks:
                        cb.on_log(s, state, record)
                else:
                    state.train_seconds += time.perf_counter() - t0
                if cfg.eval.every and state.step % cfg.eval.every == 0 and not done and s.is_main:
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
                    view.line(
                        f"{name} received: checkpoint saved at step {state.step}; "
                        f"resume with: steplab train --run-dir {run_dir} --resume"
                    )
                    break
            if status == "finished" and s.is_main:
                final = run_eval(final_eval=True)
            if status in ("finished", "target"):
                checkpoint_now()
    except StopTraining:
        status = "stopped"
        checkpoint_now()
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
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return Result(state=state, status=status, final=final, run_dir=run_dir)


def _write_run_json(run_dir: Path, s: Session, *, status: str, params: int) -> None:
    path = run_dir / "run.json"
    info = json.loads(path.read_text()) if path.exists() else {}
    if "environment" not in info:
        info["environment"] = environment(s.device)
        info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    info.update(
        status=status,
        params=params,
        preset=s.cfg.preset,
        optimizer=s.cfg.optim.name,
        seed=s.cfg.train.seed,
        updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        flops_per_token=s.flops_per_token,
        data_meta=s.data.meta,
    )
    path.write_text(json.dumps(info, indent=1, default=str))


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
    if run_dir is not None:
        run_dir = Path(run_dir)
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    s = build(cfg)
    state = None
    if resume and run_dir is not None and ckpt.list_steps(ckpt.checkpoint_dir(run_dir)):
        state = restore(s, run_dir)
        truncate_metrics(run_dir / "metrics.jsonl", state.step)
    return fit(s, run_dir=run_dir, state=state, callbacks=callbacks, progress=progress)
