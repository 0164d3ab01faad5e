"""Metrics and progress: what a run tells the person watching and the files it leaves.

`MetricsLog` appends one JSON record per logged step and per evaluation to
``metrics.jsonl`` (and to TensorBoard when the extra is installed, and to one optional
tracker, wandb or MLflow, when asked). `ProgressView` shows a rich progress bar with ETA on
a terminal and plain lines otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from steplab.config import flatten
from steplab.errors import ConfigError


class MetricsLog:
    """Append-only JSONL metrics, flushed per record so a killed run loses nothing logged.

    The JSONL file is the record of truth (plots and reports are rebuilt from it alone);
    TensorBoard and the optional tracker are mirrors of the same scalars.
    """

    def __init__(
        self,
        path: Path,
        *,
        tensorboard: bool = True,
        tracker: str = "none",
        config: Mapping[str, Any] | None = None,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.ext = build_tracker(tracker, self.path.parent, dict(config or {}))
        self.fh: TextIO = open(self.path, "a", encoding="utf-8")
        self.tb = _tensorboard_writer(self.path.parent) if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()
        if "step" not in record:
            return
        scalars = {
            k: v
            for k, v in clean.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, record["step"])
        if self.ext is not None:
            self.ext.log(scalars, int(record["step"]))

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()
        if self.ext is not None:
            self.ext.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan"/"inf": JSON has no such numbers
    return v


def _tensorboard_writer(run_dir: Path) -> Any:
    """A SummaryWriter when `tensorboard` is installed, else None (it is an optional extra)."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(run_dir / "tb"))


# --- optional external trackers (extras, off by default) -----------------------------------


class WandbTracker:
    """Weights & Biases: project and entity come from wandb's own settings (WANDB_PROJECT, ...)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(name=run_dir.name, dir=str(run_dir), config=config)

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """MLflow: the tracking URI and experiment come from MLflow's own settings (MLFLOW_TRACKING_URI, ...)."""

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        import mlflow

        self.mlflow = mlflow
        mlflow.start_run(run_name=run_dir.name)
        mlflow.log_params(flatten(config))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(scalars, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


TRACKERS: dict[str, Callable[[Path, dict[str, Any]], Any]] = {"wandb": WandbTracker, "mlflow": MlflowTracker}


def build_tracker(name: str, run_dir: Path, config: dict[str, Any]) -> Any:
    """The tracker called `name` ("none": no tracker); a missing extra is a clear error, before training."""
    if name == "none":
        return None
    if name not in TRACKERS:
        raise ConfigError(f"--train.tracker: unknown tracker {name!r} (valid: none, {', '.join(TRACKERS)})")
    if not _installed(name):
        raise ConfigError(f"--train.tracker {name} needs the {name} extra: pip install 'steplab[{name}]'")
    return TRACKERS[name](run_dir, config)


def _installed(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None
