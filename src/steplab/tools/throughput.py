"""How fast a config trains on this device: tokens per second of the real training step.

The session is built as `steplab train` builds it (same model, optimizer, precision, kernel
choices) and a few steps run after a warm-up; the median step is the answer. `steplab auto`
uses it to price model shapes and batch sizes, and benchmarks/scaling.py to draw its curves.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from steplab.config import RunConfig
from steplab.data.cache import TokenData
from steplab.loop.session import build
from steplab.loop.step import train_step
from steplab.model import count_params, matmul_params


@dataclass(frozen=True)
class Speed:
    tokens_per_second: float
    step_seconds: float  # median over the timed steps
    params: int
    matmul_params: int  # N of the scaling laws
    flops_per_token: float
    device: str


def measure_speed(cfg: RunConfig, *, steps: int = 4, warmup: int = 2, data: TokenData | None = None) -> Speed:
    """Median seconds per optimizer step of `cfg` over `steps` steps after `warmup` untimed ones.

    Each timed step ends with a host sync (the loss value), so asynchronous devices are timed
    to completion. The weights are trained for `warmup + steps` steps and thrown away.
    """
    s = build(cfg, data=data)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = train_step(
            s.step_model,
            s.optimizer,
            s.micro_batches(i),
            grad_clip=cfg.optim.grad_clip,
            amp=s.amp(),
            no_sync=s.no_sync,
        )
        out.loss.item()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step = statistics.median(times)
    tokens = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    return Speed(
        tokens_per_second=tokens / step,
        step_seconds=step,
        params=count_params(s.model),
        matmul_params=matmul_params(s.model),
        flops_per_token=s.flops_per_token,
        device=str(s.device),
    )
