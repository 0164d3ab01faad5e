"""Sharded checkpoints (--checkpoint.format sharded): layout, manifest, resume, resharding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import train_procs
from steplab import checkpoint as ckpt
from steplab import dist
from steplab.cli.main import main
from steplab.errors import CheckpointError
from steplab.rundir import read_metrics

BASE = [
    "--preset", "tiny", "--quiet", "--train.tensorboard", "false", "--train.log-every", "1",
    "--train.batch-size", "8", "--eval.every", "0", "--train.dtype", "float32",
    "--schedule", "constant", "--schedule.warmup-steps", "2",  # 6 steps are the first half of 12
]  # fmt: skip
SHARDED = ["--checkpoint.format", "sharded"]


def train(run_dir: Path, *extra: str) -> None:
    assert main(["train", *BASE, "--run-dir", str(run_dir), *extra]) == 0


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def newest(run_dir: Path) -> Path:
    return ckpt.latest(run_dir)


def test_a_sharded_checkpoint_holds_the_same_model_as_a_full_one(tmp_path: Path) -> None:
    train(tmp_path / "full", "--train.max-steps", "6")
    train(tmp_path / "sharded", "--train.max-steps", "6", *SHARDED)
    path = newest(tmp_path / "sharded")
    assert not (path / "model.safetensors").exists()
    shards = sorted(p.name for p in (path / "shards").iterdir())
    assert shards == ["shard-00001-model-00001-of-00001.safetensors"]
    manifest = json.loads((path / "manifest.json").read_text())["files"]
    assert f"shards/{shards[0]}" in manifest
    full = ckpt.load(newest(tmp_path / "full"), with_optimizer=False).weights
    sharded = ckpt.load(path, with_optimizer=False).weights  # assembled in one process: eval, sample, export
    assert sorted(full) == sorted(sharded)
    for name, t in full.items():
        assert torch.equal(t, sharded[name]), name
    shapes = ckpt.load(path, with_optimizer=False, whole=False).weights
    assert all(t.is_meta and t.shape == full[k].shape for k, t in shapes.items())


@pytest.mark.parametrize("optim", ["adamw", "muon"])
def test_a_sharded_run_resumes_on_the_uninterrupted_trajectory(
    tmp_path: Path, optim: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    train(tmp_path / "ref", "--train.max-steps", "12", "--optim.name", optim)
    run = tmp_path / "run"
    monkeypatch.setattr(dist, "SHARD_FILE_BYTES", 64 << 10)  # several files per rank
    train(run, "--train.max-steps", "6", "--optim.name", optim, *SHARDED)
    files = sorted(p.name for p in (newest(run) / "shards").iterdir())
    assert (
        len(files) > 3 and files[-1] == f"shard-00001-model-{len(files):05d}-of-{len(files):05d}.safetensors"
    )
    train(run, "--train.max-steps", "12", "--optim.name", optim, "--resume", *SHARDED)
    assert losses(run) == pytest.approx(losses(tmp_path / "ref"), abs=1e-6)


def test_damaged_shards_are_refused(tmp_path: Path) -> None:
    train(tmp_path / "run", "--train.max-steps", "3", *SHARDED)
    path = newest(tmp_path / "run")
    shard = next((path / "shards").iterdir())
    (path / "shards" / "extra.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unexpected files \['shards/extra.safetensors'\]"):
        ckpt.verify(path)
    (path / "shards" / "extra.safetensors").unlink()
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        ckpt.verify(path)
    manifest = json.loads((path / "manifest.json").read_text())
    for bad in ("shards/../state.json", "other/x", "shards/.metadata", "/etc/passwd"):
        (path / "manifest.json").write_text(json.dumps({**manifest, "files": {bad: "0"}}))
        with pytest.raises(CheckpointError, match="outside the checkpoint"):
            ckpt.verify(path)


def torchrun(tmp: Path, nproc: int, run_dir: Path, *extra: str) -> None:
    train_procs(tmp, nproc, run_dir, *BASE, *extra)


def test_saved_by_two_fsdp_processes_resumed_by_one(tmp_path: Path) -> None:
    """Every rank writes its own shard (gloo, CPU); one process reads both and continues exactly."""
    train(tmp_path / "ref", "--train.max-steps", "12")
    run = tmp_path / "run"
    torchrun(tmp_path, 2, run, "--train.max-steps", "6", "--train.parallel", "fsdp", *SHARDED)
    assert len(list((newest(run) / "shards").iterdir())) == 2
    torchrun(tmp_path, 1, run, "--train.max-steps", "12", "--resume", *SHARDED)
    assert losses(run) == pytest.approx(losses(tmp_path / "ref"), abs=1e-5)


@pytest.mark.slow
def test_saved_by_two_fsdp_processes_resumed_by_four(tmp_path: Path) -> None:
    train(tmp_path / "ref", "--train.max-steps", "12", "--optim.name", "muon")
    run = tmp_path / "run"
    fsdp = ("--train.parallel", "fsdp", "--optim.name", "muon", *SHARDED)
    torchrun(tmp_path, 2, run, "--train.max-steps", "6", *fsdp)
    torchrun(tmp_path, 4, run, "--train.max-steps", "12", "--resume", *fsdp)
    assert len(list((newest(run) / "shards").iterdir())) == 4
    assert losses(run) == pytest.approx(losses(tmp_path / "ref"), abs=1e-5)


def test_a_checkpoint_before_the_first_step_leaves_the_optimizer_fresh(tmp_path: Path) -> None:
    """The rollback guard saves at step 0: no optimizer state exists yet, and none is invented."""
    guard = ("--guard.policy", "rollback")
    train(tmp_path / "full", "--train.max-steps", "4", *guard)
    train(tmp_path / "sharded", "--train.max-steps", "4", *guard, *SHARDED)
    assert losses(tmp_path / "sharded") == pytest.approx(losses(tmp_path / "full"), abs=1e-6)
