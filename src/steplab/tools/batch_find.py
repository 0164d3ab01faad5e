"""How big a batch pays off, and how big a micro-batch fits.

Critical batch size: the gradient noise scale B_simple = tr(Σ) / |G|² (McCandlish et al.
2018, "An Empirical Model of Large-Batch Training") estimates the batch beyond which a
larger batch mostly buys a less noisy gradient rather than a better step. It is measured
from per-micro-batch gradients: with k micro-batches of b sequences, the squared norm of each
micro-batch gradient (batch b) and of their mean (batch k·b) give unbiased estimates of |G|²
and tr(Σ) (their appendix A.1). The ratio of the means over several rounds is the estimate;
a bootstrap over rounds gives its error bar. Batch sizes are counted in sequences.

Memory: the largest micro-batch that fits is found by trial under CUDA (double until out of
memory, then bisect) and estimated on the CPU: weights, gradients and optimizer state plus
the activations autograd saves per sequence (both measured on the model), against the
memory available, with a measured allowance for the backward pass's transient buffers
(`BACKWARD_PEAK`) and a safety fraction. The accumulation factor then
keeps the effective batch exactly what the user asked for.

`NoiseScaleMeter` logs the noise scale during training (``--train.noise-scale-every N``).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from steplab.config import RunConfig
from steplab.data.batches import BatchSampler
from steplab.errors import SteplabError
from steplab.loop.fit import fit
from steplab.loop.hooks import Callback, StopTraining
from steplab.loop.noise_scale import NoiseScale, measure_noise_scale
from steplab.loop.session import Session, build
from steplab.loop.step import train_step

# --- the numerics: pure functions ----------------------------------------------------------


def accumulation(global_batch: int, max_micro: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) with micro × accum == global_batch exactly.

    The fewest accumulation steps whose micro-batch fits and divides the global batch.
    """
    if global_batch < 1 or max_micro < 1:
        raise SteplabError(f"need a global batch and a micro-batch >= 1 (got {global_batch}, {max_micro})")
    for accum in range(math.ceil(global_batch / max_micro), global_batch + 1):
        if global_batch % accum == 0:
            return global_batch // accum, accum
    return 1, global_batch  # unreachable: accum == global_batch always divides


def largest_fitting(fits: Callable[[int], bool], *, cap: int = 1 << 16) -> int:
    """The largest n in [1, cap] with fits(n), assuming fits is monotone; 0 if none fits."""
    if not fits(1):
        return 0
    good, bad = 1, None
    while bad is None and good < cap:  # double until it fails
        n = min(good * 2, cap)
        if fits(n):
            good = n
        else:
            bad = n
    if bad is None:
        return good
    while bad - good > 1:  # then bisect between the last fit and the first failure
        mid = (good + bad) // 2
        if fits(mid):
            good = mid
        else:
            bad = mid
    return good


def available_memory() -> int:
    """Bytes of host memory available (Linux MemAvailable; else free physical pages)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# --- measuring on a session ------------------------------------------------------------------

# --- memory ----------------------------------------------------------------------------------


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, amp: Any = None) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward on (x, y).

    Measured, not modelled: every saved tensor passes through a hook and is counted once
    per storage; the weights (saved by every matmul) are left out.
    """
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp or nullcontext():
        _, loss = model(x, y)
    del loss
    return sum(seen.values())


def state_bytes(s: Session) -> int:
    """Weights, gradients and optimizer state of the session, in bytes (after one step)."""
    weights = sum(p.numel() * p.element_size() for p in s.model.parameters())
    opt = sum(
        v.numel() * v.element_size()
        for st in s.optimizer.state.values()
        for v in st.values()
        if isinstance(v, torch.Tensor)
    )
    return 2 * weights + opt


def cuda_fits(s: Session, batch: int) -> bool:
    """Whether a training step with a micro-batch of `batch` sequences fits in GPU memory."""
    sampler = BatchSampler(s.data.train, s.cfg.model.block_size, batch, s.cfg.train.seed, s.device)
    try:
        train_step(s.step_model, s.optimizer, [sampler.batch_at(0)], grad_clip=0.0, amp=s.amp())
        torch.cuda.synchronize(s.device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        s.optimizer.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()


# Peak memory of a training step / the activations saved for its backward pass: the backward
# pass holds gradients of activations on top. Measured 1.43x (batch 32) and 1.39x (batch 128)
# from the peak RSS of a step of the default model on the CPU (benchmarks/memory_check.py).
BACKWARD_PEAK = 1.5


@dataclass
class MemoryFit:
    max_micro_batch: int
    method: str  # "trial" (CUDA) or "estimate" (CPU)
    detail: dict[str, float]


def fit_memory(s: Session, *, fraction: float = 0.8, cap: int = 4096) -> MemoryFit:
    """The largest micro-batch (sequences) that fits: by trial on CUDA, by estimate elsewhere.

    The trial runs real training steps on the session's model: use a throw-away session.
    """
    if s.device.type == "cuda":
        n = largest_fitting(lambda b: cuda_fits(s, b), cap=cap)
        total = torch.cuda.get_device_properties(s.device).total_memory
        return MemoryFit(n, "trial", {"device_bytes": float(total)})
    x, y = s.sampler.batch_at(0)
    train_step(s.step_model, s.optimizer, [(x[:1], y[:1])], grad_clip=0.0, amp=s.amp())  # allocates state
    fixed = state_bytes(s)
    two = saved_activation_bytes(s.model, x[:2], y[:2], s.amp()) if len(x) > 1 else None
    one = saved_activation_bytes(s.model, x[:1], y[:1], s.amp())
    saved = float(two - one if two is not None and two > one else one)  # the slope: fixed parts cancel
    per_seq = BACKWARD_PEAK * saved
    avail = available_memory()
    n = int(max(0.0, fraction * avail - fixed) // per_seq)
    return MemoryFit(
        min(n, cap),
        "estimate",
        {
            "available_bytes": float(avail),
            "state_bytes": float(fixed),
            "saved_bytes_per_sequence": saved,
            "bytes_per_sequence": per_seq,
            "uncapped": float(n),
        },
    )


# --- the command's work ----------------------------------------------------------------------


class StopAt(Callback):
    """Stops `fit` at its last step so it skips the final evaluation."""

    def __init__(self, step: int):
        self.step = step

    def on_log(self, s: Session, state: Any, record: dict[str, Any]) -> None:
        if state.step >= self.step:
            raise StopTraining


@dataclass
class BatchFindResult:
    noise: NoiseScale
    memory: MemoryFit
    batch_size: int  # the micro-batch the noise was measured with
    block_size: int
    global_batch: int
    micro_batch: int
    grad_accum: int
    trained_steps: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def batch_find(
    cfg: RunConfig,
    *,
    warmup_steps: int = 0,
    rounds: int = 8,
    micro_batches: int = 4,
    global_batch: int | None = None,
    weights: dict[str, torch.Tensor] | None = None,
    fraction: float = 0.8,
) -> BatchFindResult:
    """Noise scale after `warmup_steps` steps of training (or at `weights`), memory fit and the
    accumulation for `global_batch` (default: the critical batch B_simple, rounded)."""
    c = copy.deepcopy(cfg)
    c.train.max_steps, c.train.max_tokens, c.train.max_seconds = max(1, warmup_steps), None, None
    c.train.log_every, c.eval.every, c.train.noise_scale_every = max(1, warmup_steps), 0, 0
    s = build(c)
    if weights is not None:
        from steplab.checkpoint import load_weights

        load_weights(s.model, weights, Path("--run"))
    elif warmup_steps > 0:  # the noise scale grows as the loss falls: measure where it matters
        fit(s, callbacks=[StopAt(warmup_steps)], progress=False)
    noise = measure_noise_scale(s, rounds=rounds, micro_batches=micro_batches)
    memory = fit_memory(build(c), fraction=fraction)  # a fresh throw-away session for the trial
    if memory.max_micro_batch < 1:
        raise SteplabError("not even one sequence fits in memory; use a smaller model or --model.block-size")
    if global_batch is None:
        global_batch = max(1, round(noise.b_simple)) if math.isfinite(noise.b_simple) else c.train.batch_size
    micro, accum = accumulation(global_batch, memory.max_micro_batch)
    return BatchFindResult(
        noise=noise,
        memory=memory,
        batch_size=c.train.batch_size,
        block_size=c.model.block_size,
        global_batch=global_batch,
        micro_batch=micro,
        grad_accum=accum,
        trained_steps=0 if weights is not None else warmup_steps,
    )
