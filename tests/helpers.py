"""Helpers shared by the tests (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from steplab.cli import main
from steplab.dist import torchrun_command


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `steplab ARGV` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def train_procs(tmp: Path, nproc: int, run_dir: Path, *args: str) -> None:
    """`steplab train ARGS` in one process, or in `nproc` torchrun processes (gloo, one thread each)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "steplab", "train"] if nproc == 1 else torchrun_command(nproc, ["train"])
    out = subprocess.run(
        [*cmd, *args, "--run-dir", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp,
    )
    assert out.returncode == 0, out.stderr[-3000:]
