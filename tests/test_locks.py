"""Concurrency with real processes: one writer per run directory, a stale lock taken over, two
processes preparing the same corpus share one intact cache, and liveness by pid and start time."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from steplab.cli.main import main
from steplab.locks import LOCK_NAME, dir_lock, process_alive, process_identity, process_start
from steplab.rundir import read_metrics

SRC = str(Path(__file__).resolve().parents[1] / "src")
TRAIN = ["train", "--preset", "tiny", "--quiet", "--train.tensorboard", "false"]


def python(*args: str, **kw: object) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, *args], env=env, text=True, **kw)  # type: ignore[call-overload]


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen]:
    """Another process holding the lock of tmp_path/run until it is killed."""
    run = tmp_path / "run"
    run.mkdir()
    code = "import sys; from steplab.locks import dir_lock; dir_lock(sys.argv[1]).acquire(); print('locked', flush=True); sys.stdin.read()"
    p = python("-c", code, str(run), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline().strip() == "locked"
    yield p
    p.kill()
    p.wait()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.reliability(group="concurrency", faults=1, kills=1)
def test_a_second_writer_is_refused_then_a_killed_holders_lock_is_taken_over(
    tmp_path: Path, holder: subprocess.Popen, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case: two writers of one run directory; the holder killed with SIGKILL."""
    run = tmp_path / "run"
    code, err = cli(capsys, *TRAIN, "--train.max-steps", "2", "--run-dir", str(run))
    assert code == 2 and err.count("\n") == 1
    assert f"run directory {run} is in use by pid {holder.pid} on {socket.gethostname()}" in err
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # nothing written
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == holder.pid  # stale: its holder is dead
    code, err = cli(capsys, *TRAIN, "--train.max-steps", "2", "--run-dir", str(run))
    assert code == 0, err
    assert not (run / LOCK_NAME).exists()


@pytest.mark.reliability(group="concurrency", faults=1)
def test_export_into_a_locked_run_is_refused(
    tmp_path: Path, holder: subprocess.Popen, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case: export --out RUN/export while another process writes RUN."""
    run = tmp_path / "run"
    source = tmp_path / "source"
    assert main([*TRAIN, "--train.max-steps", "2", "--run-dir", str(source)]) == 0
    (run / "run.json").write_text(json.dumps({"format": "steplab-run"}))  # make it a run
    capsys.readouterr()
    code, err = cli(
        capsys, "export", "--run", str(source), "--format", "safetensors", "--out", str(run / "exp")
    )
    assert code == 2 and f"is in use by pid {holder.pid}" in err and not (run / "exp").exists()


@pytest.mark.slow
@pytest.mark.reliability(group="concurrency", faults=1)
def test_two_trainers_on_one_run_real_processes(tmp_path: Path) -> None:
    """Case: two `steplab train --resume` processes on the same run at once."""
    run = tmp_path / "run"
    budget = [
        "--train.max-steps",
        "none",
        "--train.max-seconds",
        "15",
    ]  # the first outlives the second's start
    argv = ["-m", "steplab", *TRAIN, *budget, "--train.log-every", "1", "--run-dir", str(run)]
    first = python(*argv, stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (run / "metrics.jsonl").exists(), first.communicate()
    second = python(*argv, "--resume", stderr=subprocess.PIPE, stdout=subprocess.PIPE)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and err.count("\n") == 1, err
    assert f"is in use by pid {first.pid}" in err and "Traceback" not in err
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) > 5  # nothing logged twice


@pytest.mark.reliability(group="concurrency", faults=1)
def test_two_processes_preparing_one_corpus_share_one_intact_cache(tmp_path: Path) -> None:
    """Case: two `steplab data prepare` of the same corpus at once."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(
        "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60_000))
    )
    cache = tmp_path / "cache"
    argv = ["-m", "steplab", "data", "prepare", "--data", str(corpus), "--tokenizer", "byte"]
    procs = [
        python(*argv, "--data.cache-dir", str(cache), stderr=subprocess.PIPE, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    keys = [p for p in (cache / "tokens").iterdir() if not p.name.startswith(".")]
    assert len(keys) == 1
    meta = json.loads((keys[0] / "meta.json").read_text())
    assert hashlib.sha256((keys[0] / "tokens.bin").read_bytes()).hexdigest() == meta["sha256"]
    assert meta["tokens"] == corpus.stat().st_size  # bytes: one token each
    assert not [
        p.name for p in (cache / "tokens").iterdir() if p.name.startswith(".")
    ]  # no temporaries, no locks


def test_process_alive_by_pid_and_start_time() -> None:
    me = process_identity()
    assert process_alive(me) is True
    assert process_alive({**me, "pid_start": (me["pid_start"] or 0) + 1}) is False  # the pid was reused
    assert process_alive({**me, "host": "another-host"}) is None  # cannot tell
    assert process_alive({"pid": "12", "host": me["host"]}) is None
    p = python("-c", "pass")
    p.wait()
    assert process_alive({"pid": p.pid, "host": me["host"], "pid_start": None}) is False
    assert process_start(os.getpid()) == me["pid_start"]


def test_a_lock_file_is_removed_by_its_holder_and_rewritten_by_the_next(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text('{"pid": 999999999, "host": "x"}')  # left by a killed process
    with dir_lock(tmp_path) as lock:
        assert lock.held and json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()
