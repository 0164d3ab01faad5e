"""What a checkpoint must satisfy to be resumed: the same model, counters that steplab wrote."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from steplab import checkpoint as ckpt
from steplab.checkpoint_checks import STATE_FIELDS, checked_state, model_differences
from steplab.cli.main import main
from steplab.config import ModelConfig
from steplab.errors import CheckpointError

TINY = ["--preset", "tiny", "--quiet", "--train.tensorboard", "false", "--checkpoint.every", "10"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    cache = str(tmp_path_factory.getbasetemp() / "steplab-cache")
    assert (
        main(["train", *TINY, "--train.max-steps", "20", "--run-dir", str(run), "--data.cache-dir", cache])
        == 0
    )
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("flags", "listed"),
    [
        (["--model.n-head", "4"], ["--model.n-head 2 (checkpoint) vs 4 (this run)"]),
        (["--model.norm-eps", "0.5"], ["--model.norm-eps 1e-05 (checkpoint) vs 0.5 (this run)"]),
        (
            ["--model.qk-norm", "true", "--model.rope-theta", "500"],
            [
                "--model.rope-theta 10000.0 (checkpoint) vs 500.0 (this run)",
                "--model.qk-norm False (checkpoint)",
            ],
        ),
    ],
    ids=["n-head", "norm-eps", "two-at-once"],
)
def test_resume_refuses_a_model_that_means_something_else(
    run: Path, capsys: pytest.CaptureFixture[str], flags: list[str], listed: list[str]
) -> None:
    """Same tensor shapes, another model: refused in one line, the run untouched."""
    before = snapshot(run)
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet", *flags)
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ")
    assert "this run's model differs from the checkpoint's" in err and "a resumed run keeps its model" in err
    assert all(item in err for item in listed), err
    assert snapshot(run) == before


def test_resume_accepts_what_does_not_change_the_model(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(
        capsys, "train", "--run-dir", str(run), "--resume", "--quiet", "--model.attention", "matmul"
    )
    assert code == 0, err  # another kernel for the same attention
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet", "--train.max-steps", "30")
    assert code == 0, err  # the budget may change


def test_derived_model_settings_compare_resolved() -> None:
    saved = ModelConfig(vocab_size=65, n_head=4, n_kv_head=4)
    assert model_differences(saved, ModelConfig(vocab_size=0, n_head=4)) == []  # 0: from the tokenizer
    assert model_differences(saved, dataclasses.replace(saved, attention="sdpa")) == []
    assert model_differences(saved, ModelConfig(vocab_size=65, n_head=4, n_kv_head=2)) == [
        "--model.n-kv-head 4 (checkpoint) vs 2 (this run)"
    ]
    unset = ModelConfig(vocab_size=65, n_head=2)
    assert model_differences(unset, ModelConfig(vocab_size=65, n_head=4)) == [  # n_kv_head follows
        "--model.n-head 2 (checkpoint) vs 4 (this run)"
    ]


def rewrite_state(path: Path, **changes: Any) -> None:
    """Change state.json and re-sign the manifest: a tampering the checksums cannot catch."""
    state = json.loads((path / "state.json").read_text())
    state.update(changes)
    (path / "state.json").write_text(json.dumps(state))
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.json"] = hashlib.sha256((path / "state.json").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_tampered_state_is_refused_naming_the_file(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    newest = ckpt.latest(run)
    rewrite_state(newest, step=-5)
    before = snapshot(run)
    with pytest.raises(CheckpointError, match=r"state\.json: step must be an integer >= 0 \(got -5\)"):
        ckpt.load(newest)
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet")
    assert code == 2 and err.count("\n") == 1
    assert f"{newest / 'state.json'}: step must be an integer >= 0 (got -5)" in err
    assert snapshot(run) == before  # nothing logged twice, nothing rewritten


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "expected a JSON object, got list"),
        ({"step": 3, "tokens": -1}, "tokens must be an integer >= 0 (got -1)"),
        ({"step": 3, "tokens": 7.5}, "tokens must be an integer >= 0 (got 7.5)"),
        ({"step": True}, "step must be an integer >= 0 (got True)"),
        ({"step": 3, "train_seconds": float("nan")}, "train_seconds must be a finite number >= 0"),
        ({"step": 3, "best_step": 9}, "best_step 9 is after step 3"),
        ({"step": 3, "metrics_lines": -2}, "metrics_lines must be none or an integer >= 0 (got -2)"),
        ({"step": 3, "guard": {"mean": "x"}}, "guard must be a map of names to finite numbers >= 0"),
        ({"step": 3, "guard": [1]}, "guard must be a map of names to finite numbers >= 0"),
        ({"step": 3, "epoch": 1}, "unknown fields ['epoch']"),
    ],
)
def test_state_fields_are_checked(data: Any, message: str) -> None:
    with pytest.raises(CheckpointError, match=re_escape(f"x/state.json: {message}")):
        checked_state(data, Path("x/state.json"))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_state_as_steplab_writes_it_is_accepted() -> None:
    assert set(STATE_FIELDS) == {f.name for f in dataclasses.fields(ckpt.TrainState)}
    state = dataclasses.asdict(
        ckpt.TrainState(step=5, tokens=40, best_step=5, best_val_loss=3.2, metrics_lines=2)
    )
    assert ckpt.TrainState(**checked_state(json.loads(json.dumps(state)), Path("s"))) == ckpt.TrainState(
        **state
    )
    older = {**state, "events": []}  # checkpoints written before `events` was dropped
    assert checked_state(older, Path("s")) == state
