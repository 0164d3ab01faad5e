"""The checkpointer: when the loop saves, and which checkpoints stay on disk.

It owns `CheckpointConfig`: full or sharded (`steplab.sharded`), a save every `every` steps, the best model so far after an
evaluation that improved (`keep_best`), one on a signal or a stop, and one at the end. A
step is saved at most once (`saved_at`), so a signal right after a periodic save costs
nothing. While the guard may roll back it also keeps the newest `guard.max_attempts`
checkpoints, whatever `keep_last` says, so that every rollback it may still attempt has a
checkpoint to go back to; the final save prunes back to `keep_last` (and the best).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from steplab import checkpoint as ckpt
from steplab import dist as dist_mod
from steplab.checkpoint import TrainState
from steplab.loop.session import Session
from steplab.optim import eval_mode
from steplab.rundir import count_records
from steplab.sharded import save_sharded


class Checkpointer:
    """Periodic, best, signal and final saves of one run (`CheckpointConfig`); no-op without a run dir."""

    def __init__(self, s: Session, run_dir: Path | None, *, on_save: Callable[[], None] | None = None):
        self.s, self.run_dir, self.cfg = s, run_dir, s.cfg.checkpoint
        self.on_save = on_save  # the guard: a new checkpoint resets how far back a rollback goes
        guard = s.cfg.guard
        self.reserve = guard.max_attempts if guard.policy == "rollback" else 0
        self.saved_at: int | None = None  # the step last saved

    def due(self, step: int) -> bool:
        return bool(self.cfg.every) and step % self.cfg.every == 0

    def save(self, state: TrainState, *, final: bool = False) -> None:
        """Save `state.step` (once); every rank takes part, rank 0 writes.

        `final`: the run is over, so the checkpoints kept for rollbacks can go.
        """
        if self.run_dir is None or self.saved_at == state.step:
            return
        if self.on_save is not None:
            self.on_save()
        s = self.s
        keep_last = self.cfg.keep_last if final else max(self.cfg.keep_last, self.reserve)
        with eval_mode(s.optimizer):  # a checkpoint holds the weights to evaluate and sample
            if s.is_main:
                state.metrics_lines = count_records(self.run_dir / "metrics.jsonl")
            if self.cfg.format == "sharded":  # every rank writes its own shards, rank 0 the rest
                save_sharded(
                    self.run_dir,
                    model=s.model,
                    optimizer=s.optimizer,
                    state=state,
                    cfg=s.cfg,
                    tokenizer=s.data.tokenizer,
                    is_main=s.is_main,
                    keep_last=keep_last,
                    keep=self.keep(state),
                )
            else:  # every rank takes part in gathering the full state; rank 0 writes it
                msd, osd = dist_mod.full_state(s.model, s.optimizer) if s.dist.enabled else (None, None)
                if s.is_main:
                    ckpt.save(
                        self.run_dir,
                        model=s.model,
                        optimizer=s.optimizer,
                        model_state=msd,
                        optim_state=osd,
                        state=state,
                        cfg=s.cfg,
                        tokenizer=s.data.tokenizer,
                        keep_last=keep_last,
                        keep=self.keep(state),
                    )
        self.saved_at = state.step

    def save_best(self, state: TrainState) -> None:
        """After an evaluation that improved: the best model so far stays on disk whatever comes next."""
        if self.cfg.keep_best:
            self.save(state)

    def keep(self, state: TrainState) -> set[int]:
        return {state.best_step} if (self.cfg.keep_best and state.best_step is not None) else set()

    def ensure_rollback_target(self, state: TrainState) -> None:
        """With rollback on, something to roll back to before the first periodic checkpoint."""
        if self.reserve and self.run_dir is not None:
            if not ckpt.list_steps(ckpt.checkpoint_dir(self.run_dir)):
                self.save(state)

    def forget(self) -> None:
        """After a rollback: the step last saved may be saved again (it is another state now)."""
        self.saved_at = None
