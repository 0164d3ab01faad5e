"""Tracking: memory and MFU in the step records; TensorBoard and the optional trackers mirror them."""

from __future__ import annotations

import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from steplab.config import RunConfig, flatten
from steplab.errors import ConfigError, IgnoredSettingWarning
from steplab.loop.fit import train
from steplab.rundir import prepare_run_dir, read_metrics, truncate_records
from steplab.runtime import memory_mb, peak_flops
from steplab.trackers import MetricsLog, mirror_scalars, tag


def short(cfg: RunConfig) -> RunConfig:
    cfg.train.max_steps, cfg.eval.every = 20, 10
    return cfg


def test_step_records_carry_memory(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    train(short(tiny_cfg), tmp_path / "run")
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    assert steps and all(r["rss_mb"] > 10 for r in steps)  # python + torch alone hold far more
    assert set(memory_mb(torch.device("cpu"))) == {"rss_mb"}


def test_step_records_carry_mfu_on_cpu(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    """MFU against this CPU's measured float32 GEMM peak (measured once, then cached)."""
    train(short(tiny_cfg), tmp_path / "run")
    steps = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    peak = peak_flops(torch.device("cpu"), None)  # the cached figure the run used
    fpt = json.loads((tmp_path / "run" / "run.json").read_text())["flops_per_token"]
    assert peak and steps and all(0 < r["mfu"] < 1 for r in steps)
    assert [r["mfu"] for r in steps] == pytest.approx(
        [fpt * r["tokens_per_second"] / peak for r in steps], rel=1e-3
    )


def _events(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return acc


def test_tensorboard_sees_namespaced_scalars_the_config_and_the_run_name(
    tmp_path: Path, tiny_cfg: RunConfig
) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    tiny_cfg.train.tensorboard = True
    run = tmp_path / "runs" / "adamw-3e-3"
    train(short(tiny_cfg), run)
    acc = _events(run)
    tags = set(acc.Tags()["scalars"])
    assert {
        "train/loss",
        "val/loss",
        "val/bpb",
        "val/ppl",
        "opt/lr",
        "opt/grad_norm",
        "opt/update_ratio",
    } <= tags
    assert {
        "perf/tokens_per_second",
        "perf/mfu",
        "perf/step_seconds",
        "mem/rss_mb",
        "progress/tokens",
    } <= tags
    assert not {t for t in tags if "/" not in t}  # every tag in a section; plain names stay in the JSONL
    records = read_metrics(run / "metrics.jsonl")
    want = [(r["step"], r["loss"]) for r in records if "loss" in r]
    got = [(e.step, e.value) for e in acc.Scalars("train/loss")]
    assert [s for s, _ in got] == [s for s, _ in want] == [10, 20]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [e.step for e in acc.Scalars("val/loss")] == [10, 20]
    assert [e.step for e in acc.Scalars("progress/tokens")] == [10, 20]  # not again from the evaluations
    # The resolved config: as hyperparameters (HPARAMS tab) and as text.
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "optim.lr = 0.001" in text and "model.n_layer = 2" in text
    # `tensorboard --logdir runs` lists the run by its directory's name, events in the run dir itself.
    multiplexer = EventMultiplexer().AddRunsFromDirectory(str(tmp_path / "runs"))
    assert set(multiplexer.Runs()) == {"adamw-3e-3"}
    assert not (run / "tb").exists() and [p.suffix for p in run.glob("events.out.tfevents.*")] == [".steplab"]


def test_tensorboard_follows_the_records_a_resume_keeps(tmp_path: Path) -> None:
    """A resumed run cut metrics.jsonl back to its checkpoint: TensorBoard forgets the rest too."""
    pytest.importorskip("tensorboard")
    log = MetricsLog(tmp_path / "r" / "metrics.jsonl")
    for step in (10, 20, 30):
        log.write({"step": step, "loss": 1.0 / step})
    log.close()
    truncate_records(tmp_path / "r" / "metrics.jsonl", 1)  # as train(resume=True) does: back to step 10
    log = MetricsLog(tmp_path / "r" / "metrics.jsonl")
    log.write({"step": 20, "loss": 7.0})
    log.close()
    got = [(e.step, e.value) for e in _events(tmp_path / "r").Scalars("train/loss")]
    assert got == [(10, pytest.approx(0.1)), (20, 7.0)]


def test_overwrite_removes_steplab_events_and_no_others(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    run = tmp_path / "r"
    prepare_run_dir(run, resume=False, overwrite=False)  # a steplab run (its run.json marks it)
    log = MetricsLog(run / "metrics.jsonl")
    log.write({"step": 1, "loss": 2.0})
    log.close()
    (run / "events.out.tfevents.1.host.mine").write_bytes(b"not steplab's")
    prepare_run_dir(run, resume=False, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == ["events.out.tfevents.1.host.mine", "run.json"]


def test_tensorboard_without_the_extra_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # what a user's process does: once per place and message
        for name in ("a", "b"):
            log = MetricsLog(tmp_path / name / "metrics.jsonl", tensorboard=True)
            log.write({"step": 1, "loss": 2.0})
            log.close()
    (w,) = caught
    assert issubclass(w.category, IgnoredSettingWarning)
    assert "pip install 'steplab[tensorboard]'" in str(w.message) and "--train.tensorboard false" in str(
        w.message
    )
    assert read_metrics(tmp_path / "a" / "metrics.jsonl") == [{"step": 1, "loss": 2.0}]  # the record of truth


def test_mirror_tags() -> None:
    assert (
        tag("loss") == "train/loss"
        and tag("val_bpb") == "val/bpb"
        and tag("peak_mem_mb") == "mem/peak_mem_mb"
    )
    assert (
        tag("mfu") == "perf/mfu" and tag("lr") == "opt/lr" and tag("something_new") == "train/something_new"
    )
    event = {"step": 7, "event": "guard", "action": "skip", "flagged_loss": 9.5, "streak": 1, "ok": True}
    assert mirror_scalars(event) == {"guard/flagged_loss": 9.5, "guard/streak": 1}


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
    assert [d.get("train/loss") for _, d in run.logged] == [r.get("loss") for r in records]  # namespaced
    assert [d.get("val/loss") for _, d in run.logged] == [r.get("val_loss") for r in records]


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
        ("metrics", (5, {"train/loss": 2.5})),  # numbers only: no text, no booleans, no step
        ("end", None),
    ]
