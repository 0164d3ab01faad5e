"""Batches: seeded random training windows and the fixed validation windows.

Batch k is a pure function of (seed, k), so the sampler's position is just the step and a
resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import numpy as np
import torch

from steplab.errors import DataError


class BatchSampler:
    """Random windows of `block_size + 1` tokens; batch k is a pure function of (seed, k).

    Under torchrun every rank draws the same global batch of `batch_size` windows and keeps
    its own slice, so the data, and the losses, do not depend on the number of processes.
    The tokens stay where they are (a memory-mapped cache of any size, uint16 or uint32): each
    batch reads only its own windows, so memory does not grow with the corpus.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        block_size: int,
        batch_size: int,
        seed: int,
        device: torch.device,
        *,
        rank: int = 0,
        world_size: int = 1,
    ):
        if len(tokens) <= block_size + 1:
            raise DataError(
                f"training split has {len(tokens)} tokens, fewer than one context window "
                f"({block_size + 1}); use more text or a smaller --model.block-size"
            )
        if batch_size % world_size:
            raise DataError(
                f"--train.batch-size {batch_size} must be divisible by the number of processes ({world_size})"
            )
        self.data = tokens
        self.block_size, self.batch_size, self.seed, self.device = block_size, batch_size, seed, device
        self.offsets = np.arange(block_size + 1)
        per_rank = batch_size // world_size
        self.rows = slice(rank * per_rank, (rank + 1) * per_rank)

    def batch_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The index-th micro-batch (this rank's slice of it): inputs and targets, (B, T) each."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        starts = torch.randint(len(self.data) - self.block_size - 1, (self.batch_size,), generator=g)[
            self.rows
        ]
        rows = self.data[starts.numpy()[:, None] + self.offsets]  # (B, T + 1), read from the memmap
        window = torch.from_numpy(rows.astype(np.int64))
        x, y = window[:, :-1], window[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x.to(self.device), y.to(self.device)


def val_windows(
    tokens: np.ndarray, block_size: int, max_windows: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows over the validation split (or a fixed seeded subset of them, the
    only windows then read from the memmap)."""
    if len(tokens) < 2:
        raise DataError(
            f"validation split has {len(tokens)} tokens; use more text or a larger --data.val-fraction"
        )
    block_size = min(block_size, len(tokens) - 1)  # a split shorter than the context: one shorter window
    n = (len(tokens) - 1) // block_size
    idx = torch.arange(n)
    if max_windows is not None and max_windows < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_windows].sort().values
    rows = tokens[(idx.numpy() * block_size)[:, None] + np.arange(block_size + 1)]  # (n, T + 1)
    window = torch.from_numpy(np.asarray(rows).astype(np.int64))
    return window[:, :-1].contiguous(), window[:, 1:].contiguous()
