"""The gradient noise scale: how big a batch pays off, measured from per-micro-batch gradients.

B_simple = tr(Σ) / |G|² (McCandlish et al. 2018, "An Empirical Model of Large-Batch
Training"): with k micro-batches of b sequences, the squared norm of each micro-batch
gradient (batch b) and of their mean (batch k·b) give unbiased estimates of |G|² and tr(Σ)
(their appendix A.1). The ratio of the means over several rounds is the estimate; a
bootstrap over rounds gives its error bar. Batch sizes are counted in sequences.

`NoiseScaleMeter` logs it during training (``--train.noise-scale-every N``); `steplab
batch-find` (`steplab.tools.batch_find`) measures it once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from steplab.config import RunConfig
from steplab.data.batches import BatchSampler
from steplab.errors import SteplabError
from steplab.loop.hooks import Callback
from steplab.loop.session import Session


def noise_terms(small_sq: float, big_sq: float, b_small: float, b_big: float) -> tuple[float, float]:
    """Unbiased (|G|², tr(Σ)) from E|G_b|² = |G|² + tr(Σ)/b measured at two batch sizes."""
    if not b_big > b_small > 0:
        raise ValueError(f"need b_big > b_small > 0 (got {b_small}, {b_big})")
    g2 = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


@dataclass
class NoiseScale:
    b_simple: float  # tr(Σ) / |G|², in sequences (inf when |G|² is not resolved)
    low: float  # 16th percentile of the bootstrap (a one-sigma band)
    high: float  # 84th percentile
    g2: float  # mean |G|² estimate
    trace: float  # mean tr(Σ) estimate
    rounds: int


def b_simple(g2s: Sequence[float], traces: Sequence[float], *, boot: int = 1000, seed: int = 0) -> NoiseScale:
    """The ratio of the means (not the mean of the ratios: single-round |G|² can be ~0 or
    negative) with a bootstrap over rounds for the error bar."""
    g = np.asarray(g2s, dtype=np.float64)
    t = np.asarray(traces, dtype=np.float64)
    if len(g) == 0 or len(g) != len(t):
        raise ValueError("need the same, non-zero number of |G|² and tr(Σ) estimates")

    def ratio(gm: np.ndarray, tm: np.ndarray) -> np.ndarray:
        return np.where(gm > 0, tm / np.where(gm > 0, gm, 1.0), np.inf)

    value = float(ratio(np.array(g.mean()), np.array(t.mean())))
    if len(g) > 1:
        idx = np.random.default_rng(seed).integers(0, len(g), size=(boot, len(g)))
        samples = ratio(g[idx].mean(axis=1), t[idx].mean(axis=1))
        low, high = (float(v) for v in np.percentile(samples, [16, 84], method="nearest"))
    else:
        low, high = -math.inf, math.inf
    return NoiseScale(value, low, high, float(g.mean()), float(t.mean()), len(g))


def micro_batch_norms(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]], amp: Any = None
) -> tuple[float, float]:
    """(mean |g_i|² over the micro-batches, |mean g_i|²) at the model's current weights.

    The gradients are left cleared; the weights are not touched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    total: torch.Tensor | None = None
    small = torch.zeros((), dtype=torch.float64, device=params[0].device)
    for x, y in batches:
        for p in params:
            p.grad = None
        with amp or nullcontext():
            _, loss = model(x, y)
        loss.backward()
        g = torch.cat(
            [(p.grad if p.grad is not None else torch.zeros_like(p)).float().flatten() for p in params]
        )
        small += g.double().square().sum()
        total = g if total is None else total + g
    for p in params:
        p.grad = None
    assert total is not None
    big = (total.double() / len(batches)).square().sum()
    return float(small.item()) / len(batches), float(big.item())  # one host sync per round


def noise_sampler(s: Session) -> BatchSampler:
    """Batches for measuring, drawn apart from the training batches (another seed)."""
    c = s.cfg
    return BatchSampler(s.data.train, c.model.block_size, c.train.batch_size, c.train.seed + 7919, s.device)


def measure_noise_scale(s: Session, *, rounds: int = 8, micro_batches: int = 4) -> NoiseScale:
    """B_simple at the session's current weights from `rounds` × `micro_batches` fresh micro-batches."""
    if micro_batches < 2:
        raise SteplabError(f"--micro-batches must be >= 2 (got {micro_batches}): two batch sizes are needed")
    sampler = noise_sampler(s)
    b = s.cfg.train.batch_size
    g2s, traces = [], []
    with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
        for r in range(rounds):
            batches = [sampler.batch_at(r * micro_batches + i) for i in range(micro_batches)]
            small, big = micro_batch_norms(s.model, batches, s.amp())
            g2, trace = noise_terms(small, big, b, b * micro_batches)
            g2s.append(g2)
            traces.append(trace)
    return b_simple(g2s, traces)


class NoiseScaleMeter(Callback):
    """Logs `noise_scale` (B_simple, sequences) every `every` steps during training.

    Costs `micro_batches` extra forward-backward passes per measurement. The numerator and
    denominator are averaged over measurements with an exponential moving average (as in
    McCandlish et al.), so the logged value is smooth. Training is unchanged: the weights,
    the optimizer and the random state are left as they were.
    """

    def __init__(self, every: int, *, micro_batches: int = 4, beta: float = 0.8):
        self.every, self.micro_batches, self.beta = every, micro_batches, beta
        self.sampler: BatchSampler | None = None
        self.count, self.last = 0, 0
        self.g2_avg = self.trace_avg = 0.0
        self.weight = 0.0

    def on_log(self, s: Session, state: Any, record: dict[str, Any]) -> None:
        if state.step - self.last < self.every:
            return
        self.last = state.step
        self.sampler = self.sampler or noise_sampler(s)
        k = self.micro_batches
        with torch.random.fork_rng(devices=[s.device] if s.device.type == "cuda" else []):
            batches = [self.sampler.batch_at(state.step * k + i) for i in range(k)]
            small, big = micro_batch_norms(s.model, batches, s.amp())
        b = s.cfg.train.batch_size
        g2, trace = noise_terms(small, big, b, b * k)
        self.g2_avg = self.beta * self.g2_avg + (1 - self.beta) * g2
        self.trace_avg = self.beta * self.trace_avg + (1 - self.beta) * trace
        self.weight = self.beta * self.weight + (1 - self.beta)
        g2_hat, trace_hat = self.g2_avg / self.weight, self.trace_avg / self.weight
        record["noise_scale"] = trace_hat / g2_hat if g2_hat > 0 else math.inf
        record["grad_sq_est"] = g2_hat
        record["grad_trace_est"] = trace_hat


def meter_callbacks(cfg: RunConfig) -> list[Callback]:
    """The callbacks `train` adds for this config (the online noise-scale meter when asked)."""
    return [NoiseScaleMeter(cfg.train.noise_scale_every)] if cfg.train.noise_scale_every else []
