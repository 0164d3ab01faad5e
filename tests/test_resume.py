"""A run killed at any moment resumes exactly: SIGKILL at random points, SIGTERM, SIGINT.

Each interrupted run is a real process: the test forks, the child runs `steplab train`
(the same `main` as the command line) and dies by a real signal that it sends itself at a
chosen point (before a step, between the files of a checkpoint, before the rename that
publishes it, after the rename, halfway through a metrics line). Forking instead of
starting `python -m steplab` skips the interpreter and torch start-up; one test at the end
does start the real command and kills it from outside.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.data.batches import BatchSampler
from steplab.rundir import read_metrics

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")

POISON_INDEX = 35  # batch index whose targets are garbage: the divergence guard skips it
ARGS = [
    "train",
    "--preset",
    "tiny",
    "--quiet",
    "--train.tensorboard",
    "false",
    "--train.threads",
    "1",
    "--model.dropout",
    "0.1",  # dropout draws from the torch RNG: its state must be restored too
    "--checkpoint.every",
    "6",
    "--train.log-every",
    "5",
]
TIMING = {
    "train_seconds",
    "elapsed_seconds",
    "tokens_per_second",
    "step_seconds",
    "data_fraction",
    "mfu",
    "rss_mb",
    "peak_mem_mb",
}  # machine-dependent


def poison_batches() -> None:
    """Batch POISON_INDEX gets targets that are all one rare token: a loss spike."""
    original = BatchSampler.batch_at

    def batch_at(self: BatchSampler, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = original(self, index)
        return (x, torch.full_like(y, int(self.data.max()))) if index == POISON_INDEX else (x, y)

    BatchSampler.batch_at = batch_at  # type: ignore[method-assign]


def kill_on_call(
    module: object, name: str, n: int, sig: int = signal.SIGKILL, *, after: bool = False
) -> None:
    """Make the n-th call of module.name deliver `sig` to this process (before or after the call)."""
    original = getattr(module, name)
    calls = [0]

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls[0] += 1
        if calls[0] == n and not after:
            os.kill(os.getpid(), sig)
        out = original(*args, **kwargs)
        if calls[0] == n and after:
            os.kill(os.getpid(), sig)
        return out

    setattr(module, name, wrapper)


def torn_metrics_line(n: int) -> None:
    """SIGKILL halfway through writing the n-th metrics record."""
    from steplab.trackers import MetricsLog

    original = MetricsLog.write
    calls = [0]

    def write(self: MetricsLog, record: dict) -> None:
        calls[0] += 1
        if calls[0] == n:
            self.fh.write(json.dumps(record)[:25])
            self.fh.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        original(self, record)

    MetricsLog.write = write  # type: ignore[method-assign]


def kill_point(kind: str, n: int) -> Callable[[], None]:
    def install() -> None:
        import steplab.checkpoint
        import steplab.loop.fit

        if kind == "step":
            kill_on_call(steplab.loop.fit, "train_step", n)
        elif kind == "checkpoint-file":  # between optimizer.pt and rng.pt of a checkpoint
            kill_on_call(steplab.checkpoint.torch, "save", 2 * n)
        elif kind == "checkpoint-rename":  # everything written and fsynced, not yet published
            kill_on_call(steplab.checkpoint, "publish", n)
        elif kind == "checkpoint-published":  # renamed into place, old ones not yet pruned
            kill_on_call(steplab.checkpoint, "prune", n)
        elif kind == "metrics-line":
            torn_metrics_line(n)
        else:
            raise AssertionError(kind)

    return install


def run_forked(argv: list[str], fault: Callable[[], None] | None, log: Path) -> int:
    """Run `steplab ARGV` in a forked child; return its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            sys.stdout = sys.stderr = open(log, "w", buffering=1)  # noqa: SIM115
            poison_batches()
            if fault is not None:
                fault()
            code = main(argv)
        except BaseException as e:  # noqa: BLE001 - report anything, then exit
            print(f"child failed: {e!r}", file=sys.stderr)
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def assert_killed_where_intended(run: Path, kind: str) -> None:
    """The evidence each kill point leaves on disk (so the test cannot pass by killing elsewhere)."""
    partial = list((run / "checkpoints").glob(".tmp-*"))
    if kind in ("checkpoint-file", "checkpoint-rename"):
        assert len(partial) == 1, kind
        assert (partial[0] / "manifest.json").exists() == (kind == "checkpoint-rename")
    else:
        assert not partial, kind
    if kind == "checkpoint-published":
        ckpt.verify(ckpt.checkpoint_dir(run) / f"{ckpt.PREFIX}{ckpt.list_steps(run / 'checkpoints')[-1]:08d}")
    last = (run / "metrics.jsonl").read_text().split("\n")[-1]
    assert (last != "") == (kind == "metrics-line"), kind  # only that kill leaves a torn line


def comparable(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in read_metrics(run / "metrics.jsonl")]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return ckpt.load(run / "checkpoints" / f"{ckpt.PREFIX}{50:08d}").weights


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run (same seed, same poisoned batch), trained once in this process."""
    original = BatchSampler.batch_at
    poison_batches()
    run = tmp_path_factory.mktemp("resume") / "reference"
    try:
        assert main([*ARGS, "--run-dir", str(run), *cache_flag(tmp_path_factory)]) == 0
    finally:
        BatchSampler.batch_at = original  # type: ignore[method-assign]
    return run


def cache_flag(factory: pytest.TempPathFactory) -> list[str]:
    return ["--data.cache-dir", str(factory.getbasetemp() / "steplab-cache")]


@pytest.mark.reliability(group="kill -9", faults=6, kills=6)
def test_sigkill_at_random_points_resumes_bitwise(tmp_path: Path, reference: Path) -> None:
    seed = int(os.environ.get("STEPLAB_KILL_SEED", "2024"))
    rng = random.Random(seed)
    kinds = ["step", "checkpoint-file", "checkpoint-rename", "checkpoint-published", "metrics-line", "step"]
    rng.shuffle(kinds)
    run = tmp_path / "killed"
    argv = [*ARGS, "--run-dir", str(run)]
    points = []
    for i, kind in enumerate(kinds):
        # Counts are per process, and a resumed process has only the steps after its checkpoint
        # left: draw each point before the final checkpoint is complete, so the next process
        # still has something to kill.
        done = (ckpt.list_steps(run / "checkpoints") or [0])[-1]
        periodic = len([k for k in range(done + 1, 50) if k % 6 == 0])  # saves before the final one
        most = {
            "step": 49 - done,
            "checkpoint-published": periodic,
            "metrics-line": len([k for k in range(done + 1, 50) if k % 5 == 0]),
        }.get(kind, 1 + periodic)
        if most < 1:  # too late in the run for this kind: a write cut short is always possible
            kind, most = "checkpoint-file", 1
        points.append((kind, rng.randint(1, most)))
        status = run_forked(argv + (["--resume"] if i else []), kill_point(*points[-1]), tmp_path / f"log{i}")
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
            f"seed {seed}: {points[-1]} did not kill: {(tmp_path / f'log{i}').read_text()}"
        )
        assert_killed_where_intended(run, kind)
    status = run_forked([*argv, "--resume"], None, tmp_path / "final")
    log = (tmp_path / "final").read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log
    assert "finished: 50 steps" in log

    a, b = final_weights(reference), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"seed {seed}, points {points}"
    records = comparable(run)
    assert records == comparable(reference), f"seed {seed}, points {points}"
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == sorted(set(steps))  # nothing logged twice
    assert [r["action"] for r in records if "event" in r] == ["skip"]  # the poisoned batch, once
    assert not list((run / "checkpoints").glob(".tmp-*"))  # leftovers of the killed writes are gone


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path, reference: Path, sig: int) -> None:
    import steplab.loop.fit

    run = tmp_path / "preempted"
    argv = [*ARGS, "--run-dir", str(run)]
    status = run_forked(argv, lambda: kill_on_call(steplab.loop.fit, "train_step", 17, sig), tmp_path / "log")
    log = (tmp_path / "log").read_text()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, log
    name = signal.Signals(sig).name
    assert (
        f"{name} received: checkpoint saved at step 17; resume with: steplab train --run-dir {run} --resume"
        in log
    )
    assert ckpt.list_steps(run / "checkpoints")[-1] == 17
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    # resumed with no flags at all: the run's own config.toml is the base
    status = run_forked(["train", "--run-dir", str(run), "--resume", "--quiet"], None, tmp_path / "log2")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (tmp_path / "log2").read_text()
    a, b = final_weights(reference), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(run) == comparable(reference)


def test_resume_of_a_finished_run_logs_nothing_twice(tmp_path: Path, reference: Path) -> None:
    import shutil

    run = Path(shutil.copytree(reference, tmp_path / "copy"))
    assert main(["train", "--run-dir", str(run), "--resume", "--quiet"]) == 0
    assert comparable(run) == comparable(reference)


def test_resume_before_the_first_checkpoint_starts_over(tmp_path: Path, reference: Path) -> None:
    run = tmp_path / "early"
    status = run_forked([*ARGS, "--run-dir", str(run)], kill_point("step", 6), tmp_path / "log")
    assert os.WIFSIGNALED(status)
    assert (run / "metrics.jsonl").read_text() and not ckpt.list_steps(run / "checkpoints")
    status = run_forked([*ARGS, "--run-dir", str(run), "--resume"], None, tmp_path / "log2")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert comparable(run) == comparable(reference)


@pytest.mark.slow
@pytest.mark.reliability(group="kill -9", faults=1, kills=1)
def test_real_command_killed_from_outside_resumes_bitwise(tmp_path: Path) -> None:
    """`python -m steplab train` killed with SIGKILL by another process once it has logged a few steps."""
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    base = [
        sys.executable,
        "-m",
        "steplab",
        *ARGS[:-4],
        "--checkpoint.every",
        "5",
        "--train.max-steps",
        "150",
    ]
    ref, run = tmp_path / "ref", tmp_path / "run"
    subprocess.run([*base, "--run-dir", str(ref)], env=env, check=True, capture_output=True)
    proc = subprocess.Popen([*base, "--run-dir", str(run)], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # wait for real progress, then kill
        if len([r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    subprocess.run([*base, "--run-dir", str(run), "--resume"], env=env, check=True, capture_output=True)
    last = ckpt.list_steps(ref / "checkpoints")[-1]
    a = ckpt.load(ref / "checkpoints" / f"{ckpt.PREFIX}{last:08d}").weights
    b = ckpt.load(run / "checkpoints" / f"{ckpt.PREFIX}{last:08d}").weights
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert comparable(run) == comparable(ref)
