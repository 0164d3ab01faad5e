"""Hooks into the loop: the callback interface that lr-find, tune, compare and the meters use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from steplab.checkpoint import TrainState
    from steplab.loop.session import Session


class StopTraining(Exception):
    """Raised by a callback to end the run early (the run still finishes cleanly)."""


class Callback:
    """Hooks into the loop; subclasses override what they need."""

    def on_log(self, s: Session, state: TrainState, record: dict[str, Any]) -> None:
        """After a logged step with a finite loss; keys added to `record` are logged with it."""

    def on_eval(self, s: Session, state: TrainState, record: dict[str, Any]) -> None: ...
