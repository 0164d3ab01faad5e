"""Metrics: what a run records, and the mirrors that show it elsewhere.

`MetricsLog` appends one JSON record per logged step, evaluation and guard event to
``metrics.jsonl``, the record of truth, under plain names (``loss``, ``val_loss``). Its
mirrors, TensorBoard when the extra is installed and one optional tracker (wandb or MLflow),
get the numbers under namespaced tags (``train/loss``, ``val/loss``; `mirror_scalars`), so
each section is one group of charts, as in torchtitan's and Hugging Face's logs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from steplab.config import flatten
from steplab.errors import ConfigError, IgnoredSettingWarning
from steplab.rundir import read_metrics


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
        self.tb = TensorBoardMirror.open(self.path.parent, dict(config or {})) if tensorboard else None
        self.fh: TextIO = open(self.path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in record.items()}
        self.fh.write(json.dumps(clean) + "\n")
        self.fh.flush()
        if "step" not in record or (self.tb is None and self.ext is None):
            return
        scalars = mirror_scalars(clean)
        for mirror in (self.tb, self.ext):
            if mirror is not None:
                mirror.log(scalars, int(record["step"]))

    def close(self) -> None:
        self.fh.close()
        for mirror in (self.tb, self.ext):
            if mirror is not None:
                mirror.close()


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # "nan"/"inf": JSON has no such numbers
    return v


# --- tags: plain record keys -> namespaced mirror tags ----------------------------------------

TAGS: dict[str, str] = {
    "loss": "train/loss",
    "lr": "opt/lr",
    "grad_norm": "opt/grad_norm",
    "update_ratio": "opt/update_ratio",
    "noise_scale": "opt/noise_scale",
    "grad_sq_est": "opt/grad_sq_est",
    "grad_trace_est": "opt/grad_trace_est",
    "tokens_per_second": "perf/tokens_per_second",
    "step_seconds": "perf/step_seconds",
    "data_fraction": "perf/data_fraction",
    "mfu": "perf/mfu",
    "tokens": "progress/tokens",
    "train_seconds": "progress/train_seconds",
    "elapsed_seconds": "progress/elapsed_seconds",
}
COUNTERS = {"tokens", "train_seconds", "elapsed_seconds"}  # mirrored from step records only


def tag(key: str) -> str:
    """The namespaced tag of a step or evaluation record's key (``val_bpb`` -> ``val/bpb``)."""
    if key in TAGS:
        return TAGS[key]
    if key.startswith("val_"):
        return "val/" + key.removeprefix("val_")
    if key.endswith("_mb"):
        return "mem/" + key
    return "train/" + key


def mirror_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of one record under their mirror tags.

    Event records (the guard's) go under their event's name (``guard/flagged_loss``); the
    counters that every record repeats (tokens, seconds) come from step records only, so an
    evaluation does not draw a second point for them. Text and booleans stay in the JSONL.
    """
    event = record.get("event")
    out = {}
    for k, v in record.items():
        if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        if event is None and k in COUNTERS and "loss" not in record:
            continue
        out[f"{event}/{k}" if event is not None else tag(k)] = v
    return out


# --- TensorBoard ------------------------------------------------------------------------------


class TensorBoardMirror:
    """TensorBoard events written into the run directory itself.

    So ``tensorboard --logdir runs/`` lists each run under its directory's name. The files end
    in ``.steplab`` (``--overwrite`` removes those and nothing else). A resumed run purges the
    events logged after the records it kept (TensorBoard's restart marker), so the charts
    follow metrics.jsonl. The resolved config is logged as hyperparameters (the HPARAMS tab)
    and as text.
    """

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def open(cls, run_dir: Path, config: dict[str, Any]) -> TensorBoardMirror | None:
        """A mirror, or None with one warning when the tensorboard extra is not installed."""
        try:
            import tensorboard  # noqa: F401
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn(
                "--train.tensorboard: no TensorBoard events are written, the tensorboard extra is not "
                "installed (pip install 'steplab[tensorboard]', or --train.tensorboard false)",
                IgnoredSettingWarning,
                stacklevel=3,
            )
            return None
        kept = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if isinstance(r.get("step"), int)]
        writer = SummaryWriter(
            log_dir=str(run_dir), filename_suffix=".steplab", purge_step=max(kept) + 1 if kept else None
        )
        mirror = cls(writer)
        if config:
            mirror.log_config(config)
        return mirror

    def log_config(self, config: dict[str, Any]) -> None:
        from torch.utils.tensorboard.summary import hparams

        flat = {k: _hparam(v) for k, v in flatten(config).items()}
        for summary in hparams(flat, {"val/loss": 0.0, "val/bpb": 0.0, "train/loss": 0.0}):
            self.writer.file_writer.add_summary(summary)
        text = "\n".join(f"    {k} = {v}" for k, v in flat.items())  # indented: a Markdown code block
        self.writer.add_text("config", text)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for k, v in scalars.items():
            self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        self.writer.close()


def _hparam(v: Any) -> float | int | str:
    """What TensorBoard's HPARAMS tab takes: numbers and text (booleans and None as words)."""
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else "none"
    return v if isinstance(v, (int, float, str)) else str(v)


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
