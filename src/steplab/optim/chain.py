"""Several optimizers driven as one (`Chain`), and the train/eval modes of schedule-free ones."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch


class Chain(torch.optim.Optimizer):
    """Several optimizers over disjoint parameter groups, driven as one.

    `param_groups` is the children's groups in order (the same dicts, so `set_lr` reaches
    them), `state_dict` nests the children's, and `step`/`zero_grad` call each child.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:  # noqa: D107 - no super().__init__
        self.optimizers = list(optimizers)
        self.defaults: dict[str, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]  # children's, live
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"chain": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        parts = state_dict["chain"]  # KeyError for another optimizer's state: reported by restore()
        if len(parts) != len(self.optimizers):
            raise ValueError(f"state holds {len(parts)} optimizers, this chain has {len(self.optimizers)}")
        for o, sd in zip(self.optimizers, parts, strict=True):
            o.load_state_dict(sd)

    def __repr__(self) -> str:
        return f"Chain({', '.join(type(o).__name__ for o in self.optimizers)})"


# --- schedule-free optimizers keep two points: train at y, evaluate and save at x -------------


def has_modes(opt: torch.optim.Optimizer) -> bool:
    """Whether the optimizer has train/eval modes (schedule-free), directly or inside a Chain."""
    if isinstance(opt, Chain):
        return any(has_modes(o) for o in opt.optimizers)
    return callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))


def _each(opt: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    return opt.optimizers if isinstance(opt, Chain) else [opt]


def train_mode(opt: torch.optim.Optimizer) -> None:
    """Put the weights at the point the optimizer steps from (a no-op for most optimizers)."""
    for o in _each(opt):
        if has_modes(o):
            o.train()  # type: ignore[attr-defined]


@contextmanager
def eval_mode(opt: torch.optim.Optimizer) -> Iterator[None]:
    """Evaluate and checkpoint the weights a schedule-free optimizer would return, then go back.

    Schedule-free AdamW trains at an interpolation y of its iterate z and the average x; the
    model to evaluate, sample and save is x. A no-op for optimizers without modes.
    """
    modal = [o for o in _each(opt) if has_modes(o)]
    for o in modal:
        o.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for o in modal:
            o.train()  # type: ignore[attr-defined]
