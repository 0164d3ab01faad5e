"""The loop's writes into its run directory: config, tokenizer, run.json, summary.json, metrics.jsonl.

Rank 0 alone writes, and only through `steplab.rundir.RunDir` (which owns the files'
format and their safe writing) and `steplab.trackers.MetricsLog`. Without a run directory
every method does nothing.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import Any

from steplab.checkpoint import TrainState
from steplab.config import dump_toml, to_dict
from steplab.loop.session import Session
from steplab.model import count_params
from steplab.optim import state_bytes
from steplab.rundir import RunDir, read_json
from steplab.runtime import environment
from steplab.trackers import MetricsLog

MEMORY_KEYS = ("peak_mem_mb", "rss_mb")  # CUDA peak allocated; CPU resident set (largest sampled)


class RunWriter:
    """How the run describes itself on disk while it trains and when it ends."""

    def __init__(self, s: Session, run_dir: Path | None):
        self.s = s
        self.dir = RunDir(run_dir) if (run_dir is not None and s.is_main) else None
        t = s.cfg.train
        self.log = (
            MetricsLog(self.dir.metrics, tensorboard=t.tensorboard, tracker=t.tracker, config=to_dict(s.cfg))
            if self.dir is not None
            else None
        )
        self.params = count_params(s.model)

    def start(self) -> None:
        if self.dir is not None:
            self.dir.write_config(dump_toml(self.s.cfg))
            self.dir.write_tokenizer(self.s.data.tokenizer.to_json())
            self.status("running")

    def status(self, status: str) -> None:
        """run.json: how the run stands, with what it is (written once: the environment)."""
        if self.dir is None:
            return
        s = self.s
        extra = {} if "environment" in self.dir.read_info() else {"environment": environment(s.device)}
        self.dir.update_info(
            status=status,
            params=self.params,
            preset=s.cfg.preset,
            optimizer=s.cfg.optim.name,
            seed=s.cfg.train.seed,
            flops_per_token=s.flops_per_token,
            data_meta=s.data.meta,
            **extra,
        )

    def crashed(self, error: BaseException) -> None:
        """Record how the run ended without masking the error itself."""
        with suppress(Exception):
            self.status("interrupted" if isinstance(error, KeyboardInterrupt) else "crashed")

    def finish(
        self, status: str, state: TrainState, final: dict[str, float], memory: dict[str, float]
    ) -> None:
        """run.json's status and summary.json: the outcome, the best, memory and optimizer state."""
        if self.dir is None:
            return
        self.status(status)
        before = read_json(self.dir.path / "summary.json")  # a resumed run: the peak over every process
        peaks = {
            k: max(v, before[k]) if isinstance(before.get(k), (int, float)) else v
            for k, v in memory.items()
            if k in MEMORY_KEYS
        }
        summary: dict[str, Any] = {
            "status": status,
            "step": state.step,
            "tokens": state.tokens,
            "train_seconds": state.train_seconds,
            "best_val_loss": state.best_val_loss,
            "best_step": state.best_step,
            **final,
            **peaks,
            "optimizer_state_mb": round(state_bytes(self.s.optimizer) / 2**20, 3),
        }
        self.dir.write_summary(summary)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
