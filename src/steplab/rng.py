"""Every RNG a training step may draw from, saved and restored as plain tensors.

A checkpoint's ``rng.pt`` holds the torch (and CUDA), Python `random` and NumPy global
states as tensors, so it loads with ``torch.load(weights_only=True)``; `is_rng_state` checks
a loaded file has exactly that structure before anything is restored from it.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_state() -> dict[str, torch.Tensor]:
    """Every RNG a step may draw from (torch, CUDA, Python, NumPy), as plain tensors."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    version, words, gauss = random.getstate()
    state["python"] = torch.tensor([version, *words], dtype=torch.int64)
    state["python_gauss"] = torch.tensor([gauss is not None, gauss or 0.0], dtype=torch.float64)
    _, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state["numpy"] = torch.tensor([pos, has_gauss, *np.asarray(keys).tolist()], dtype=torch.int64)
    state["numpy_gauss"] = torch.tensor([cached], dtype=torch.float64)
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    if "python" in state:
        words = state["python"].tolist()
        has, gauss = state["python_gauss"].tolist()
        random.setstate((int(words[0]), tuple(int(w) for w in words[1:]), gauss if has else None))
    if "numpy" in state:
        pos, has_gauss, *keys = state["numpy"].tolist()
        cached = float(state["numpy_gauss"][0])
        np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, cached))


# The RNG states `rng_state` writes: (dtype, length) of each (a CUDA state: uint8, any length).
RNG_SHAPES = {
    "torch": (torch.uint8, torch.get_rng_state().numel()),
    "python": (torch.int64, 626),  # version + 625 Mersenne Twister words
    "python_gauss": (torch.float64, 2),
    "numpy": (torch.int64, 626),  # position, has_gauss + 624 key words
    "numpy_gauss": (torch.float64, 1),
}


def is_rng_state(rng: Any) -> bool:
    """Whether `rng` has the structure `rng_state` writes (names, dtypes, lengths)."""
    if not isinstance(rng, dict) or "torch" not in rng:
        return False
    if ("python" in rng) != ("python_gauss" in rng) or ("numpy" in rng) != ("numpy_gauss" in rng):
        return False
    for k, v in rng.items():
        if not isinstance(k, str) or not isinstance(v, torch.Tensor) or v.dim() != 1:
            return False
        dtype, n = RNG_SHAPES.get(k, (torch.uint8, v.numel()) if k.startswith("cuda") else (None, -1))
        if v.dtype != dtype or v.numel() != n:
            return False
    return True
