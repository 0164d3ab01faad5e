"""Will it fit? Memory estimated from the config before anything is allocated.

`--model.n-embd 65536 --model.n-layer 8` would ask for hundreds of gigabytes one layer at a
time, and ``n_layer = 10**22`` would build layers until killed: `check_fits` refuses such a
run up front, naming the estimate and the memory available, before a tensor exists.

The estimate, in float32 bytes (autocast makes activations smaller, so it errs on the safe side):

- parameters P, counted exactly from the config (`param_count` equals `count_params` of
  the model built);
- weights, gradients and optimizer state: 4P each, the state times the number of tensors
  the optimizer keeps per parameter (`STATE_TENSORS`; Adam's two moments by default);
- activations kept for backward, per token of a micro-batch and per layer: about ten
  widths (norms, q/k/v, attention output, residuals) plus three MLP hidden widths, plus the
  (heads x T) attention scores when the matmul attention runs; then the logits, three
  vocabulary-sized floats per token (logits, their float copy, the softmax gradient).

Under FSDP the weights, gradients and state are divided by the number of processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from steplab.config import ModelConfig, RunConfig
from steplab.errors import ConfigError
from steplab.model import MATMUL_ATTENTION_MAX_T

FLOAT = 4  # bytes: float32 master weights, gradients and state
STATE_TENSORS = {"sgd": 1, "adagrad": 1, "rmsprop": 1, "lion": 1, "adafactor": 1, "soap": 4}
DEFAULT_STATE_TENSORS = 2  # Adam's two moments (Muon: one momentum, but AdamW on the embeddings)


def param_count(cfg: ModelConfig) -> int:
    """The model's parameters (shared ones once), from the config alone: exact, allocation-free."""
    C, V, L, b = cfg.n_embd, cfg.vocab_size, cfg.n_layer, int(cfg.bias)
    hs, H = cfg.head_dim, cfg.mlp_hidden
    qkv_out = (cfg.n_head + 2 * cfg.kv_heads) * hs
    norm = C * (1 if cfg.norm == "rmsnorm" else 1 + b)
    attn = C * qkv_out + b * qkv_out + C * C + b * C + (2 * hs if cfg.qk_norm else 0)
    fc_out = H * (2 if cfg.mlp == "swiglu" else 1)
    mlp = C * fc_out + b * fc_out + H * C + b * C
    block = 2 * norm + attn + mlp
    embed = V * C + (cfg.block_size * C if cfg.pos == "learned" else 0)
    head = 0 if cfg.tie_embeddings else V * C
    return embed + L * block + norm + head


def activation_floats(cfg: ModelConfig, batch_size: int) -> int:
    """Floats kept for backward by one micro-batch (see the module docstring)."""
    C, T, L = cfg.n_embd, cfg.block_size, cfg.n_layer
    matmul_attention = cfg.attention == "matmul" or (cfg.attention == "auto" and T <= MATMUL_ATTENTION_MAX_T)
    per_token_layer = 10 * C + 3 * cfg.mlp_hidden + (2 * cfg.n_head * T if matmul_attention else 0)
    return batch_size * T * (L * per_token_layer + 3 * cfg.vocab_size)


def estimate_bytes(cfg: RunConfig, *, world_size: int = 1) -> dict[str, int]:
    """Bytes one process needs to train `cfg`: parameters, gradients, optimizer state, activations."""
    P = param_count(cfg.model)
    shards = world_size if cfg.train.parallel == "fsdp" else 1
    states = STATE_TENSORS.get(cfg.optim.name, DEFAULT_STATE_TENSORS)
    out = {
        "params": P,
        "weights": FLOAT * P // shards,
        "gradients": FLOAT * P // shards,
        "optimizer": FLOAT * P * states // shards,
        "activations": FLOAT * activation_floats(cfg.model, cfg.train.batch_size),
    }
    out["total"] = out["weights"] + out["gradients"] + out["optimizer"] + out["activations"]
    return out


def available_bytes(device: Any) -> int | None:
    """Memory this process can still take on `device`; None when it cannot be told."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    return _host_available()


def _host_available() -> int | None:
    """MemAvailable, or the container's cgroup limit minus its usage when that is smaller."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cg = Path("/sys/fs/cgroup")
    try:
        limit = (cg / "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int((cg / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_fits(cfg: RunConfig, device: Any, *, world_size: int = 1) -> dict[str, int]:
    """Refuse a run whose estimate exceeds the memory available, naming both; return the estimate.

    ``STEPLAB_SKIP_MEMORY_CHECK=1`` skips the refusal (the estimate is an estimate).
    """
    est = estimate_bytes(cfg, world_size=world_size)
    free = available_bytes(device)
    if free is None or est["total"] <= free or os.environ.get("STEPLAB_SKIP_MEMORY_CHECK") == "1":
        return est
    raise ConfigError(
        f"this model cannot fit: {est['params']:,} parameters need about {gib(est['total'])} to train "
        f"(weights {gib(est['weights'])}, gradients {gib(est['gradients'])}, optimizer state "
        f"{gib(est['optimizer'])}, activations {gib(est['activations'])}) but {gib(free)} is available on "
        f"{getattr(device, 'type', device)}; make --model.n-embd, --model.n-layer, --model.block-size "
        "or --train.batch-size smaller"
    )
