"""The training step: forward and backward over the micro-batches, clip, optimizer step.

The one step everything calls (train, compare, lr-find, tune, batch-find). It returns device
tensors and never synchronises with the host unless its `check` does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn as nn

# --- the step -----------------------------------------------------------------------------


@dataclass
class StepResult:
    loss: torch.Tensor  # mean loss over the micro-batches, on the device
    grad_norm: torch.Tensor  # global gradient norm before clipping, on the device
    applied: bool = True  # False when `check` refused the update


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    grad_clip: float,
    amp: AbstractContextManager | None = None,
    no_sync: Callable[[], AbstractContextManager] | None = None,
    check: Callable[[torch.Tensor, torch.Tensor], bool] | None = None,
) -> StepResult:
    """One optimizer step over `len(batches)` micro-batches (gradient accumulation).

    `no_sync` (DDP) skips the gradient all-reduce on every micro-batch but the last.
    `check(loss, grad_norm)` runs before the update and may refuse it (the divergence guard).
    No host synchronisation happens here (unless `check` makes one): the returned tensors
    stay on the device.
    """
    n = len(batches)
    total: torch.Tensor | None = None
    for i, (x, y) in enumerate(batches):
        sync_ctx = no_sync() if (no_sync is not None and i < n - 1) else nullcontext()
        with sync_ctx:
            with amp or nullcontext():
                _, loss = model(x, y)
            (loss / n if n > 1 else loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None, "train_step needs at least one micro-batch"
    mean_loss = total / n if n > 1 else total
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if grad_clip > 0:
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip, foreach=True)
    else:
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params], foreach=True)
    if hasattr(grad_norm, "full_tensor"):  # FSDP2: a replicated DTensor
        grad_norm = grad_norm.full_tensor()
    if check is not None and not check(mean_loss, grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return StepResult(loss=mean_loss, grad_norm=grad_norm, applied=False)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss=mean_loss, grad_norm=grad_norm)
