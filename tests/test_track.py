"""Tracking: memory in the step records, TensorBoard mirrors the scalars, optional trackers."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from steplab.config import RunConfig, flatten
from steplab.errors import ConfigError
from steplab.loop.fit import train
from steplab.rundir import read_metrics
from steplab.runtime import memory_mb
from steplab.trackers import MetricsLog


def short(cfg: RunConfig) -> RunConfig:
    cfg.train.max_steps, cfg.eval.every = 20, 10
    return cfg


def test_step_records_carry_memory(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    train(short(tiny_cfg), tmp_path / "run")
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps and all(r["rss_mb"] > 10 for r in steps)  # python + torch alone hold far more
    assert set(memory_mb(torch.device("cpu"))) == {"rss_mb"}


def test_tensorboard_reader_sees_the_logged_scalars(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tiny_cfg.train.tensorboard = True
    run = tmp_path / "run"
    train(short(tiny_cfg), run)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "lr", "grad_norm", "tokens_per_second", "rss_mb", "val_loss", "val_bpb"} <= tags
    records = read_metrics(run / "metrics.jsonl")
    want = [(r["step"], r["loss"]) for r in records if "loss" in r]
    got = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in got] == [s for s, _ in want] == [10, 20]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [e.step for e in acc.Scalars("val_loss")] == [10, 20]


class FakeWandbRun:
    def __init__(self, **kwargs: Any) -> None:
        self.init = kwargs
        self.logged: list[tuple[int, dict[str, float]]] = []
        self.finished = False

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.logged.append((step, scalars))

    def finish(self) -> None:
        self.finished = True


def test_wandb_tracker_gets_every_record(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[FakeWandbRun] = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kw: runs.append(FakeWandbRun(**kw)) or runs[-1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    tiny_cfg.train.tracker = "wandb"
    train(short(tiny_cfg), tmp_path / "run")
    (run,) = runs
    assert run.finished and run.init["name"] == "run" and run.init["config"]["optim"]["name"] == "adamw"
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [s for s, _ in run.logged] == [r["step"] for r in records]
    assert [d.get("loss") for _, d in run.logged] == [r.get("loss") for r in records]


def test_missing_tracker_extra_is_a_config_error(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    tiny_cfg.train.tracker = "mlflow"
    with pytest.raises(ConfigError, match=r"--train.tracker mlflow needs the mlflow extra"):
        train(short(tiny_cfg), tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.raises(ConfigError, match="unknown tracker 'neptune'"):
        MetricsLog(tmp_path / "m.jsonl", tensorboard=False, tracker="neptune")


def test_nan_is_written_as_a_string_and_flatten_nests_keys(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "m.jsonl", tensorboard=False)
    log.write({"step": 1, "loss": float("nan")})
    log.close()
    assert read_metrics(tmp_path / "m.jsonl") == [{"step": 1, "loss": "nan"}]
    assert flatten({"optim": {"lr": 1e-3, "x": {"y": 1}}, "preset": "p"}) == {
        "optim.lr": 1e-3,
        "optim.x.y": 1,
        "preset": "p",
    }


def test_mlflow_tracker_logs_params_and_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []
    fake = types.ModuleType("mlflow")
    fake.start_run = lambda run_name: calls.append(("start", run_name))  # type: ignore[attr-defined]
    fake.log_params = lambda params: calls.append(("params", params))  # type: ignore[attr-defined]
    fake.log_metrics = lambda metrics, step: calls.append(("metrics", (step, metrics)))  # type: ignore[attr-defined]
    fake.end_run = lambda: calls.append(("end", None))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    log = MetricsLog(
        tmp_path / "r" / "metrics.jsonl", tensorboard=False, tracker="mlflow", config={"optim": {"lr": 0.1}}
    )
    log.write({"step": 5, "loss": 2.5, "note": "text", "ok": True})
    log.close()
    assert calls == [
        ("start", "r"),
        ("params", {"optim.lr": 0.1}),
        ("metrics", (5, {"loss": 2.5})),  # numbers only: no text, no booleans, no step
        ("end", None),
    ]
