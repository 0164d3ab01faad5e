"""Checkpoints: RNG state, damaged and malicious files, a full disk, mismatched runs, changed settings."""

from __future__ import annotations

import errno
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.errors import CheckpointError
from steplab.loop.session import build
from steplab.presets import tiny

TINY = ["--preset", "tiny", "--quiet", "--train.tensorboard", "false", "--checkpoint.every", "10"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny run (checkpoints at 40 and 50, plus the best), shared read-only."""
    run = tmp_path_factory.mktemp("trained") / "run"
    cache = str(tmp_path_factory.getbasetemp() / "steplab-cache")
    assert main(["train", *TINY, "--run-dir", str(run), "--data.cache-dir", cache]) == 0
    return run


@pytest.fixture
def run(trained: Path, tmp_path: Path) -> Path:
    """A private copy of the trained run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"{ckpt.PREFIX}{step:08d}"


def test_every_rng_is_saved_as_plain_tensors_and_restored(tmp_path: Path) -> None:
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.standard_normal()  # leaves a cached Gaussian in NumPy's state
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.standard_normal(2))
    state = torch.load(tmp_path / "rng.pt", weights_only=True)  # nothing but tensors
    ckpt.set_rng_state(state)
    again = (torch.rand(3), random.random(), random.gauss(0, 1), np.random.standard_normal(2))
    assert torch.equal(expected[0], again[0]) and expected[1:3] == again[1:3]
    assert np.array_equal(expected[3], again[3])


def test_checkpoint_holds_everything_the_next_step_needs(trained: Path) -> None:
    path = ckpt.latest(trained)
    names = {p.name for p in path.iterdir()}
    assert names == {
        "model.safetensors",
        "optimizer.pt",
        "rng.pt",
        "state.json",
        "config.toml",
        "tokenizer.json",
        "manifest.json",
    }
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 50 and state["tokens"] == 50 * 8 * 32
    assert state["metrics_lines"] == len((trained / "metrics.jsonl").read_text().splitlines())
    assert {"mean", "var", "data_offset", "lr_scale"} <= set(state["guard"])
    assert ckpt.list_steps(trained / "checkpoints") == [40, 50]


@pytest.mark.parametrize("damage", ["truncated", "bit-flip", "manifest-missing"])
@pytest.mark.reliability(group="damaged artefact", faults=1)
def test_damaged_newest_checkpoint_is_skipped_with_a_warning(
    run: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    newest = step_dir(run, 50)
    f = newest / "model.safetensors"
    if damage == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "bit-flip":
        data = bytearray(f.read_bytes())
        data[-10] ^= 0x01
        f.write_bytes(bytes(data))
    else:
        (newest / "manifest.json").unlink()
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet", "--train.max-steps", "55")
    assert code == 0, err
    assert err.startswith("warning: skipping damaged checkpoint:") and str(newest) in err
    assert err.count("\n") == 1
    steps = [
        r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 55


@pytest.mark.reliability(group="damaged artefact", faults=1)
def test_every_checkpoint_damaged_is_one_line_exit_2(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for step in ckpt.list_steps(run / "checkpoints"):
        (step_dir(run, step) / "state.json").write_text("{}")
    before = (run / "metrics.jsonl").read_text()
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet")
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert (
        last.startswith("error:")
        and "every checkpoint is damaged" in last
        and "state.json is corrupted" in last
    )
    assert (run / "metrics.jsonl").read_text() == before


class Evil:
    """Unpickling this creates a file: what a malicious checkpoint would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.marker), "w"))


def plant(path: Path, name: str, marker: Path, *, fix_manifest: bool) -> None:
    torch.save({"state": {}, "param_groups": [], "x": Evil(marker)}, path / name)
    if fix_manifest:  # the attacker also rewrote the manifest: the hashes now agree
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["files"][name] = ckpt._sha256(path / name)
        (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("name", "fix_manifest", "message"),
    [
        ("optimizer.pt", True, "refusing to unpickle"),
        ("optimizer.pt", False, "optimizer.pt is corrupted (checksum mismatch)"),
        ("extra.pt", False, "unexpected files ['extra.pt']"),
    ],
    ids=["consistent-manifest", "stale-manifest", "extra-file"],
)
@pytest.mark.reliability(group="damaged artefact", faults=1)
def test_malicious_pickle_is_refused_without_running(
    run: Path, tmp_path: Path, name: str, fix_manifest: bool, message: str
) -> None:
    marker = tmp_path / "pwned"
    path = step_dir(run, 50)
    plant(path, name, marker, fix_manifest=fix_manifest)
    with pytest.raises(
        CheckpointError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")
    ):
        ckpt.load(path)
    assert not marker.exists()


def test_malicious_pickle_through_the_commands(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    for step in ckpt.list_steps(run / "checkpoints"):
        plant(step_dir(run, step), "rng.pt", marker, fix_manifest=True)
    code, err = cli(capsys, "eval", "--run", str(run))
    assert code == 2 and "refusing to unpickle" in err and err.count("\n") == 1
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet")
    assert code == 2 and "refusing to unpickle" in err
    assert not marker.exists()


def test_disk_full_while_checkpointing_keeps_the_previous_one(
    run: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {
        s: (step_dir(run, s) / "manifest.json").read_text() for s in ckpt.list_steps(run / "checkpoints")
    }
    calls = [0]
    real_save = torch.save

    def full_disk(obj, f, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls[0] += 1
        if calls[0] == 2:  # weights and optimizer state written, then the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet", "--train.max-steps", "60")
    assert code == 2 and err.count("\n") == 1
    assert "cannot write checkpoint step_00000060" in err and "no space left on device" in err
    assert f"the previous checkpoint {step_dir(run, 50)} is intact" in err and "resume with --resume" in err
    assert {
        s: (step_dir(run, s) / "manifest.json").read_text() for s in ckpt.list_steps(run / "checkpoints")
    } == before
    ckpt.verify(step_dir(run, 50))
    assert not list((run / "checkpoints").glob(".tmp-*"))


def test_checkpoint_of_another_model_shape(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet", "--model.n-embd", "64")
    assert code == 2 and err.count("\n") == 1
    assert (
        "has shape (32,) in the checkpoint but (64,) in the model (the checkpoint is of a different model shape)"
        in err
    )


def test_tokenizer_that_does_not_match_the_checkpoint(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.txt"
    other.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet", "--data", str(other))
    assert code == 2 and err.count("\n") == 1
    assert "the checkpoint's tokenizer (char, 65 tokens) does not match this run's (char, 28 tokens)" in err


def test_optimizer_that_does_not_match_the_checkpoint(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, "train", "--run-dir", str(run), "--resume", "--quiet", "--optim.name", "sgd")
    assert code == 2 and "trained with --optim.name adamw, this run uses sgd" in err


def test_restore_reapplies_changed_settings_to_the_optimizer(trained: Path) -> None:
    cfg = ckpt.load(ckpt.latest(trained)).cfg
    cfg.optim.weight_decay, cfg.optim.beta2 = 0.0, 0.95
    s = build(cfg)
    state = ckpt.restore(
        ckpt.latest(trained), model=s.model, optimizer=s.optimizer, tokenizer=s.data.tokenizer
    )
    assert state.step == 50
    assert s.optimizer.state  # the moments came back ...
    for g in s.optimizer.param_groups:  # ... and the settings are this run's, not the checkpoint's
        assert g["weight_decay"] == 0.0 and g["betas"] == (0.9, 0.95)


def test_resume_without_flags_uses_the_runs_own_config(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["train", "--run-dir", str(run), "--resume", "--quiet", "--print-config", "--optim.lr", "5e-4"])
        == 0
    )
    printed = capsys.readouterr().out
    assert 'preset = "tiny"' in printed and "n_embd = 32" in printed and "every = 10" in printed
    assert "lr = 0.0005" in printed  # flags still override


def test_resume_needs_a_run_directory(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = cli(capsys, "train", "--preset", "tiny", "--resume")
    assert code == 2 and "--resume needs the run to continue: pass --run-dir" in err


def test_saving_the_same_step_twice_replaces_it_atomically(tmp_path: Path) -> None:
    cfg = tiny()
    s = build(cfg)
    state = ckpt.TrainState(step=7)
    kw = dict(model=s.model, optimizer=s.optimizer, state=state, cfg=cfg, tokenizer=s.data.tokenizer)
    ckpt.save(tmp_path, **kw)  # type: ignore[arg-type]
    ckpt.save(tmp_path, **kw)  # type: ignore[arg-type]
    assert ckpt.list_steps(tmp_path / "checkpoints") == [7]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000007"]
    ckpt.verify(tmp_path / "checkpoints" / "step_00000007")


@pytest.mark.reliability(group="damaged artefact", faults=1)
def test_manifest_cannot_point_outside_the_checkpoint(run: Path) -> None:
    path = step_dir(run, 50)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../metrics.jsonl"] = "0" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="outside the checkpoint"):
        ckpt.verify(path)
