"""torchrun with 2 gloo processes: DDP and FSDP2 match one process; checkpoints cross world sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import train_procs
from steplab.rundir import read_metrics

BASE = [
    "--preset",
    "tiny",
    "--quiet",
    "--train.tensorboard",
    "false",
    "--train.log-every",
    "1",
    "--train.batch-size",
    "8",
    "--eval.every",
    "0",
    "--model.dropout",
    "0.0",
    "--train.dtype",  # bf16 rounding depends on how the batch is split across processes
    "float32",
]


def run(tmp: Path, nproc: int, run_dir: Path, *extra: str) -> None:
    train_procs(tmp, nproc, run_dir, *BASE, *extra)


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path: Path, parallel: str) -> None:
    run(tmp_path, 1, tmp_path / "one", "--train.max-steps", "10")
    run(tmp_path, 2, tmp_path / "two", "--train.max-steps", "10", "--train.parallel", parallel)
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 10
    assert one == pytest.approx(two, abs=1e-5)


def test_resume_across_world_sizes(tmp_path: Path) -> None:
    """2 -> 1 and 1 -> 2 continue on the same loss trajectory as an uninterrupted run.

    A constant schedule makes a 6-step run the first half of a 12-step run.
    """
    const = ("--schedule", "constant", "--schedule.warmup-steps", "2")
    run(tmp_path, 1, tmp_path / "ref", "--train.max-steps", "12", *const)
    ref = losses(tmp_path / "ref")
    for first, second, name in [(2, 1, "a"), (1, 2, "b")]:
        d = tmp_path / name
        run(tmp_path, first, d, "--train.max-steps", "6", *const)
        run(tmp_path, second, d, "--train.max-steps", "12", "--resume", *const)
        assert losses(d) == pytest.approx(ref, abs=1e-5)
