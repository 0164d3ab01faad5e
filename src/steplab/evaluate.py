"""Validation loss, perplexity and bits per byte.

Loss is the mean cross-entropy over non-overlapping windows of `block_size` tokens covering
the whole validation split (or a fixed seeded subset when `max_windows` is set). Bits per
byte divides by the UTF-8 bytes those tokens stand for, so char, byte and BPE runs compare.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext

import torch
import torch.nn as nn


@torch.no_grad()
def mean_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    amp: AbstractContextManager | None = None,
) -> float:
    """Token-weighted mean cross-entropy over windows (N, T); the model is left in its mode."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with amp or nullcontext():
            _, loss = model(xb, yb)
        total += loss.double() * xb.shape[0]
    model.train(was_training)
    return float(total.item()) / len(x)  # one host sync per evaluation


def summarize(loss: float, bytes_per_token: float) -> dict[str, float]:
    """val_loss (nats/token), perplexity and bits per byte."""
    return {
        "val_loss": loss,
        "val_ppl": math.exp(min(loss, 50.0)),
        "val_bpb": loss / math.log(2) / bytes_per_token,
    }
