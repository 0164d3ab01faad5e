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
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

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


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --- memory --------------------------------------------------------------------------------


def memory_mb(device: Any) -> dict[str, float]:
    """The memory fields of a step record.

    On CUDA, ``peak_mem_mb``: the peak bytes held by tensors (`max_memory_allocated`), the
    number that decides whether a batch fits. Elsewhere, ``rss_mb``: the process's resident
    set, which includes Python and torch themselves (a few hundred MiB before any model).
    """
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return {"peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    rss = rss_bytes()
    return {"rss_mb": round(rss / 2**20, 1)} if rss else {}


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a killed run is ignored)."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past `step` (a resumed run will log them again)."""
    p = Path(path)
    if not p.exists():
        return
    keep = [json.dumps(r) for r in read_metrics(p) if r.get("step", 0) <= step]
    p.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def count_records(path: Path) -> int:
    """Complete lines in a metrics.jsonl (what a checkpoint remembers, to cut back to on resume)."""
    p = Path(path)
    return p.read_bytes().count(b"\n") if p.exists() else 0


def truncate_records(path: Path, n: int, *, keep_events: bool = False) -> None:
    """Keep the first `n` records (and, with `keep_events`, every later ``event`` record)."""
    p = Path(path)
    if not p.exists():
        return
    lines = p.read_text(encoding="utf-8").split("\n")[:-1]  # a torn last line (a killed run) goes too
    later = [line for line in lines[n:] if keep_events and '"event"' in line and _is_event(line)]
    p.write_text("".join(line + "\n" for line in lines[:n] + later), encoding="utf-8")


def _is_event(line: str) -> bool:
    try:
        return "event" in json.loads(line)
    except json.JSONDecodeError:
        return False


def fmt_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressView:
    """A live bar on a terminal, one line per log step elsewhere, nothing when quiet.

    `label` names the bar (train, compare, tune, lr-find, report): every long command shows
    the same kind of bar with an ETA.
    """

    def __init__(
        self,
        total: float,
        unit: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        label: str = "train",
    ):
        self.total, self.unit, self.enabled, self.label = total, unit, enabled, label
        self.stream = stream or sys.stderr
        self.live = enabled and self.stream.isatty()
        self.bar: Any = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=Console(file=self.stream),
                transient=False,
            )
            self.task = self.bar.add_task(label, total=total, info="")
            self.bar.start()

    def update(self, done: float, info: str) -> None:
        if self.live:
            self.bar.update(self.task, completed=min(done, self.total), info=info)

    def line(self, text: str) -> None:
        """A message that stays (a log line when plain, printed above the bar when live)."""
        if not self.enabled:
            return
        if self.live:
            self.bar.console.print(text, highlight=False, markup=False)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.live:
            self.bar.stop()
