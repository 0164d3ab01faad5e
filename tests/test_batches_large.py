"""Batches from a multi-GB token file: memory does not grow with the file, resume is exact.

The token files are sparse (made by `truncate`): gigabytes on paper, no disk written, so the
test is fast; only the pages the sampler reads are ever touched.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from steplab.data.batches import BatchSampler, val_windows
from steplab.runtime import rss_bytes


def sparse_tokens(path: Path, n: int, dtype: type) -> np.memmap:
    """A memmap of `n` tokens of `dtype`, zeros except a known pattern at both ends."""
    with open(path, "wb") as fh:
        fh.truncate(n * np.dtype(dtype).itemsize)
    tokens = np.memmap(path, dtype=dtype, mode="r+", shape=(n,))
    tokens[:1000] = np.arange(1000, dtype=dtype)
    tokens[-1000:] = np.arange(1000, dtype=dtype) + (70_000 if dtype == np.uint32 else 0)
    tokens.flush()
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_sampling_a_3gb_token_file_stays_small_and_resumes_exactly(tmp_path: Path, dtype: type) -> None:
    n = 3 * 2**30 // np.dtype(dtype).itemsize  # 3 GiB of tokens
    tokens = sparse_tokens(tmp_path / "tokens.bin", n, dtype)
    gc.collect()
    before = rss_bytes()
    sampler = BatchSampler(tokens, 256, 16, seed=7, device=torch.device("cpu"))
    drawn = [sampler.batch_at(k) for k in range(40)]
    x, _ = val_windows(tokens[-5000:], 256, None, seed=7)  # a split at the end of the file
    grown = (rss_bytes() or 0) - (before or 0)
    assert grown < 64 * 2**20, f"sampling grew the process by {grown / 2**20:.0f} MiB"
    assert all(b[0].shape == (16, 256) and b[0].dtype == torch.int64 for b in drawn)
    assert torch.equal(drawn[0][0][:, 1:], drawn[0][1][:, :-1])  # targets are the inputs shifted
    assert torch.equal(x.flatten(), torch.from_numpy(tokens[-5000:][: x.numel()].astype(np.int64)))
    assert int(x.max()) == (70_863 if dtype == np.uint32 else 863)  # uint32 ids above 65,535 kept
    # A resumed run builds a new sampler and asks for the batches from its step on.
    resumed = BatchSampler(tokens, 256, 16, seed=7, device=torch.device("cpu"))
    for k in (39, 20, 21):
        assert torch.equal(resumed.batch_at(k)[0], drawn[k][0])
        assert torch.equal(resumed.batch_at(k)[1], drawn[k][1])
    # Two processes each take their half of the same global batch.
    halves = [BatchSampler(tokens, 256, 16, 7, torch.device("cpu"), rank=r, world_size=2) for r in (0, 1)]
    assert torch.equal(torch.cat([h.batch_at(5)[0] for h in halves]), drawn[5][0])
