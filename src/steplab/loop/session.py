"""The session: every runtime object of one run, built from a `RunConfig`."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from steplab import dist as dist_mod
from steplab import optim, schedules
from steplab.config import RunConfig
from steplab.data.batches import BatchSampler, val_windows
from steplab.data.cache import TokenData, prepare
from steplab.errors import ConfigError, DataError
from steplab.evaluate import mean_loss, summarize
from steplab.finetune import add_lora, freeze
from steplab.hf import pretrained
from steplab.model import GPT, flops_per_token, matmul_params
from steplab.optim import build_optimizer, eval_mode
from steplab.runtime import (
    autocast,
    autocast_dtype,
    configure_threads,
    peak_flops,
    resolve_device,
)
from steplab.schedules import build_schedule
from steplab.sizing import check_fits

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
    dist: dist_mod.DistInfo = field(default_factory=dist_mod.DistInfo)

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes checkpoints and prints."""
        return self.dist.is_main

    def amp(self) -> AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def micro_batches(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The micro-batches of optimizer step `step` (a pure function of seed and step)."""
        k = self.cfg.train.grad_accum
        return [self.sampler.batch_at(step * k + i) for i in range(k)]

    @property
    def peak_lr(self) -> float:
        lr = self.cfg.optim.lr
        if isinstance(lr, str):
            raise ConfigError("--optim.lr auto must be resolved by the LR finder before training")
        return float(lr)


def check(cfg: RunConfig) -> RunConfig:
    """Every check of a config before anything is built: types, ranges, registered names."""
    cfg.validate()
    optim.check_name(cfg.optim.name)
    schedules.check_name(cfg.schedule.name)
    return cfg


def resolve(cfg: RunConfig) -> RunConfig:
    """`cfg` as `build` uses it, checked: a fine-tune's [model] and [tokenizer] become the
    pretrained model's (`--init-from`; idempotent), then every check (`check`)."""
    if cfg.train.init_from:
        pretrained.apply(cfg)
    return check(cfg)


def build(cfg: RunConfig, *, data: TokenData | None = None, device: torch.device | None = None) -> Session:
    """Tokenize (or reuse the cache), build model, optimizer, schedule and sampler.

    Under torchrun the model is wrapped for DDP or FSDP2 (`steplab.dist`); the optimizer is
    built after the wrapping so that it sees FSDP's sharded parameters.
    """
    resolve(cfg)
    configure_threads(cfg.train)
    device = device or resolve_device(cfg.train.device)
    info = dist_mod.init_from_env(device.type)
    device = dist_mod.local_device(info, device)
    data = data or prepare(cfg.data, cfg.tokenizer, progress=cfg.train.progress and info.is_main)
    if cfg.model.vocab_size == 0:
        cfg.model.vocab_size = data.tokenizer.vocab_size
    elif cfg.model.vocab_size < data.tokenizer.vocab_size:
        raise ConfigError(
            f"--model.vocab-size {cfg.model.vocab_size} is smaller than the tokenizer's {data.tokenizer.vocab_size}"
        )
    try:
        sampler = BatchSampler(
            data.train,
            cfg.model.block_size,
            cfg.train.batch_size,
            cfg.train.seed,
            device,
            rank=info.rank,
            world_size=info.world_size,
        )
    except DataError as e:  # name the corpus: the sampler only sees its tokens
        raise DataError(f"--data {cfg.data.path or 'bundled corpus'}: {e}") from None
    check_fits(cfg, device, world_size=info.world_size)  # refuse a model that cannot fit before building it
    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    if cfg.train.init_from:  # the pretrained weights replace the random init
        pretrained.load_into(model, cfg.train.init_from)
    freeze(model, cfg.train.freeze)  # frozen parameters stay out of the optimizer's groups
    add_lora(model, cfg.train.lora_rank, cfg.train.lora_alpha)  # then only the adapters train
    fpt = flops_per_token(cfg.model, matmul_params(model))
    step_model: nn.Module = model
    if info.enabled:
        step_model = (dist_mod.apply_fsdp if cfg.train.parallel == "fsdp" else dist_mod.apply_ddp)(
            model, device
        )
    optimizer = build_optimizer(model, cfg.optim, device, cfg.model)
    if cfg.train.compile:
        step_model = torch.compile(step_model)  # type: ignore[assignment]
    return Session(
        cfg=cfg,
        device=device,
        data=data,
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        schedule=build_schedule(cfg.schedule),
        sampler=sampler,
        val=val_windows(
            data.val, cfg.eval.window or cfg.model.block_size, cfg.eval.max_windows, cfg.train.seed
        ),
        amp_dtype=autocast_dtype(cfg.train, device),
        flops_per_token=fpt,
        peak_flops=peak_flops(device, autocast_dtype(cfg.train, device)),  # of the GEMMs the step runs
        no_sync=dist_mod.no_sync_for(step_model),
        dist=info,
    )


def evaluate(s: Session) -> dict[str, float]:
    """Validation metrics; under torchrun each rank takes an equal share of the windows."""
    x, y = s.val
    if s.dist.enabled:
        per_rank = len(x) // s.dist.world_size  # equal shares: FSDP needs the same number of forwards
        rows = slice(s.dist.rank * per_rank, (s.dist.rank + 1) * per_rank)
        x, y = x[rows], y[rows]
    with eval_mode(s.optimizer):  # schedule-free optimizers evaluate their averaged weights
        loss = mean_loss(s.model, x, y, batch_size=s.cfg.eval.batch_size, device=s.device, amp=s.amp())
    if s.dist.enabled:
        loss = float(dist_mod.all_reduce(torch.tensor(loss, dtype=torch.float64, device=s.device)).item())
    return summarize(loss, s.data.bytes_per_token)
