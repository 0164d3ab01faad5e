"""Signals: SIGTERM and SIGINT (preemption, Ctrl-C) become a flag the loop checks between steps.

The loop then saves a checkpoint and says how to resume; a second Ctrl-C stops at once.
Under torchrun every rank must stop at the same step: `agree` shares a signal received by
any rank, and the training time (the seconds budget) as the largest over ranks.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import torch

from steplab import dist as dist_mod
from steplab.checkpoint import TrainState
from steplab.loop.session import Session


class Signals:
    """Turn SIGTERM/SIGINT into `received`, for the life of a `with` block (main thread only)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the defaults
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def message(self, step: int, run_dir: Path | None) -> str:
        """What the person who sent the signal needs to know: where it stopped, how to go on."""
        assert self.received is not None
        name = signal.Signals(self.received).name
        if run_dir is None:
            return f"{name} received: stopped at step {step} (no run directory: nothing saved)"
        return (
            f"{name} received: checkpoint saved at step {step}; "
            f"resume with: steplab train --run-dir {run_dir} --resume"
        )


def agree(s: Session, state: TrainState, signals: Signals) -> None:
    """Under torchrun: every rank takes the largest training time and any rank's signal."""
    if not s.dist.enabled:
        return
    agreed = dist_mod.all_reduce(
        torch.tensor([state.train_seconds, float(signals.received or 0)], device=s.device), "max"
    ).tolist()
    state.train_seconds = agreed[0]
    signals.received = signals.received or (int(agreed[1]) or None)
