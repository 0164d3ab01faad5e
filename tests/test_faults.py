"""Real I/O faults and damaged artefacts: one line, a non-zero exit, and what was there is kept.

Faults are real where the OS allows: a tmpfs filled to the brim, a read-only bind mount, a
path through a regular file, a FIFO, a character device, files truncated or altered on disk,
SIGKILL at every point of a checkpoint write. (Mounting needs root; those tests skip elsewhere.)
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from faultfs import fill, read_only, tmpfs
from helpers import cli
from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.config import DataConfig, TokenizerConfig
from steplab.data.cache import prepare

TRAIN = ["train", "--preset", "tiny", "--quiet", "--train.tensorboard", "false", "--eval.every", "0"]
reliability = pytest.mark.reliability


def one_line(err: str) -> str:
    """The single error line of a failed command: only one, the last (after any progress the
    command printed before the fault), and no traceback."""
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a corpus that never ends must be refused, not read)."""

    def expired(*_: object) -> None:
        raise AssertionError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"{ckpt.PREFIX}{step:08d}"


# --- a full disk -----------------------------------------------------------------------------


@reliability(group="I/O fault", faults=1)
@pytest.mark.parametrize(
    ("leave", "writer"), [(48 << 10, "safetensors"), (200 << 10, "torch.save")], ids=["weights", "optimizer"]
)
def test_disk_full_while_checkpointing_keeps_the_previous_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], leave: int, writer: str
) -> None:
    """Case: disk full while writing a checkpoint (safetensors' and torch.save's own errors)."""
    with tmpfs(tmp_path / "fs", "4m") as fs:
        run = fs / "run"
        assert cli(capsys, *TRAIN, "--train.max-steps", "5", "--run-dir", str(run))[0] == 0
        filler = fill(fs, leave=leave)  # room for metrics and run.json, not for the next checkpoint
        code, _, err = cli(capsys, *TRAIN, "--train.max-steps", "10", "--run-dir", str(run), "--resume")
        line = one_line(err)
        assert (
            code == 2
            and "cannot write checkpoint step_00000010" in line
            and "no space left on device" in line
        )
        assert f"the previous checkpoint {step_dir(run, 5)} is intact" in line
        assert ckpt.list_steps(run / "checkpoints") == [5] and not list((run / "checkpoints").iterdir())[1:]
        ckpt.verify(step_dir(run, 5))
        filler.unlink()  # space freed: the run resumes from the intact checkpoint
        code, out, err = cli(capsys, *TRAIN, "--train.max-steps", "10", "--run-dir", str(run), "--resume")
        assert code == 0 and "finished: 10 steps" in out, err
        ckpt.verify(step_dir(run, 10))


@reliability(group="I/O fault", faults=1)
def test_disk_full_while_writing_the_token_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case: disk full while writing the token cache (numpy's 'N requested and 0 written')."""
    with tmpfs(tmp_path / "fs", "256k") as fs:
        code, _, err = cli(capsys, "data", "prepare", "--data.cache-dir", str(fs / "cache"))
        line = one_line(err)
        assert code == 2 and "cannot write" in line and "no space left on device" in line
        assert "--data.cache-dir" in line
        assert [p.name for p in (fs / "cache" / "tokens").iterdir()] == []  # no half-written cache, no lock


# --- unwritable places -----------------------------------------------------------------------


@reliability(group="I/O fault", faults=1)
def test_run_dir_on_a_read_only_file_system(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case: a new run, and a resumed one, on a read-only file system."""
    (tmp_path / "ro").mkdir()
    assert cli(capsys, *TRAIN, "--train.max-steps", "3", "--run-dir", str(tmp_path / "ro" / "old"))[0] == 0
    before = {p: p.read_bytes() for p in (tmp_path / "ro").rglob("*") if p.is_file()}
    with read_only(tmp_path / "ro"):
        code, _, err = cli(
            capsys, *TRAIN, "--train.max-steps", "3", "--run-dir", str(tmp_path / "ro" / "new")
        )
        assert code == 2 and "read-only file system" in one_line(err)
        code, _, err = cli(
            capsys, *TRAIN, "--train.max-steps", "6", "--run-dir", str(tmp_path / "ro" / "old"), "--resume"
        )
        assert code == 2 and "read-only file system" in one_line(err)
    assert {p: p.read_bytes() for p in (tmp_path / "ro").rglob("*") if p.is_file()} == before


@reliability(group="I/O fault", faults=1)
def test_run_dir_under_a_regular_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case: --run-dir a path through a regular file."""
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(tmp_path / "notes.txt" / "run"))
    assert code == 2 and "not a directory" in one_line(err)
    assert (tmp_path / "notes.txt").read_text() == "mine"


# --- a corpus that never ends ------------------------------------------------------------------


@reliability(group="damaged input", faults=1)
@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "dev-null"])
def test_a_corpus_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """Case: --data a FIFO, /dev/zero or another character device: refused up front, never read."""
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero" if kind == "dev-zero" else "/dev/null")
        if not path.exists():
            pytest.skip(f"no {path}")
    with deadline(60):
        code, _, err = cli(capsys, *TRAIN, "--data", str(path), "--run-dir", str(tmp_path / "run"))
    line = one_line(err)
    assert code == 2 and f"--data: {path} is a " in line and "not a regular file" in line
    assert not (tmp_path / "run").exists()


# --- damaged artefacts -------------------------------------------------------------------------


def bundled_cache(tmp_path: Path) -> tuple[DataConfig, TokenizerConfig, Path]:
    data, tok = DataConfig(cache_dir=str(tmp_path / "cache")), TokenizerConfig(kind="char")
    prepare(data, tok)
    (key,) = [p for p in (tmp_path / "cache" / "tokens").iterdir() if not p.name.startswith(".")]
    return data, tok, key


@reliability(group="damaged artefact", faults=1)
@pytest.mark.parametrize("damage", ["truncated", "out-of-vocabulary", "meta-missing"])
def test_a_damaged_token_cache_is_rebuilt_never_trained_on(tmp_path: Path, damage: str) -> None:
    """Case: a truncated tokens.bin, token ids outside the vocabulary, a missing meta.json."""
    data, tok, key = bundled_cache(tmp_path)
    good = (key / "tokens.bin").read_bytes()
    vocab = json.loads((key / "meta.json").read_text())["vocab_size"]
    if damage == "truncated":
        os.truncate(key / "tokens.bin", len(good) // 2)
    elif damage == "out-of-vocabulary":
        with open(key / "tokens.bin", "r+b") as fh:
            fh.seek(1000)
            fh.write(np.array([60000, 60001], dtype=np.uint16).tobytes())
    else:
        (key / "meta.json").unlink()
    with pytest.warns(UserWarning, match=f"token cache {key} is damaged"):
        rebuilt = prepare(data, tok)
    assert (key / "tokens.bin").read_bytes() == good
    assert int(max(rebuilt.train.max(), rebuilt.val.max())) < vocab
    assert not [p for p in key.parent.iterdir() if p.name.startswith(".")]


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    r = tmp_path / "run"
    assert cli(capsys, *TRAIN, "--train.max-steps", "4", "--run-dir", str(r))[0] == 0
    return r


def rehash(path: Path) -> None:
    """Make the manifest match the files again (a tampered checkpoint that still 'verifies')."""
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"] = {f: ckpt._sha256(path / f) for f in manifest["files"]}
    (path / "manifest.json").write_text(json.dumps(manifest))


def manifest_as_list(path: Path) -> None:
    (path / "manifest.json").write_text(json.dumps({"step": 4, "files": sorted(os.listdir(path))}))


def rng_of_wrong_shape(path: Path) -> None:
    torch.save({"torch": torch.zeros(3), "python": torch.zeros(2)}, path / "rng.pt")
    rehash(path)


def rng_not_a_dict(path: Path) -> None:
    torch.save([torch.zeros(3)], path / "rng.pt")
    rehash(path)


def optimizer_not_a_state(path: Path) -> None:
    torch.save({"state": [1, 2], "param_groups": "x"}, path / "optimizer.pt")
    rehash(path)


DAMAGED_CHECKPOINTS = [
    ("manifest-list", manifest_as_list, "manifest.json is damaged", ("eval", "resume")),
    ("rng-shape", rng_of_wrong_shape, "rng.pt is not a set of RNG states", ("eval", "resume")),
    ("rng-list", rng_not_a_dict, "rng.pt is not a set of RNG states", ("eval", "resume")),
    ("optimizer-structure", optimizer_not_a_state, "optimizer.pt is not an optimizer state", ("resume",)),
]


@reliability(group="damaged artefact", faults=1)
@pytest.mark.parametrize(
    ("damage", "message", "command"),
    [
        pytest.param(damage, message, command, id=f"{command}-{name}")
        for name, damage, message, commands in DAMAGED_CHECKPOINTS
        for command in commands  # eval reads no optimizer state
    ],
)
def test_checkpoint_files_of_the_wrong_structure(
    run: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], None], message: str, command: str
) -> None:
    """Case: a checkpoint's manifest, rng.pt or optimizer.pt of the wrong structure."""
    damage(step_dir(run, 4))
    resume = [*TRAIN, "--train.max-steps", "6", "--run-dir", str(run), "--resume"]
    code, _, err = cli(capsys, *(["eval", "--run", str(run)] if command == "eval" else resume))
    assert code == 2 and message in one_line(err)


# --- sizes checked before allocation ------------------------------------------------------------


@reliability(group="size")
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model.n-embd", "65536", "--model.n-layer", "8", "--model.n-head", "8"], "this model cannot fit"),
        (["--model.n-layer", "1000000000000"], "this model cannot fit"),
        (
            ["--model.n-layer", "99999999999999999999999"],
            "--model.n-layer is too large (got '99999999999999999999999'",
        ),
        (["--train.batch-size", "1e30"], "--train.batch-size must be int (got '1e30')"),
        (["--optim.lr", "inf"], "--optim.lr must be"),
    ],
    ids=["wide", "deep", "beyond-int64", "float-for-int", "infinite-float"],
)
def test_sizes_are_checked_before_anything_is_allocated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """Case: a model that cannot fit, and integers beyond any allocation, refused up front."""
    with deadline(120):
        code, _, err = cli(capsys, *TRAIN, *argv, "--run-dir", str(tmp_path / "run"))
    line = one_line(err)
    assert code == 2 and message in line
    if "cannot fit" in message:
        assert "GiB is available on cpu" in line and "parameters need about" in line
    assert not (tmp_path / "run").exists()


@reliability(group="size")
def test_an_enormous_integer_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case: n_layer = 99999999999999999999999 in a TOML file: exact, refused (no layer built)."""
    (tmp_path / "c.toml").write_text("[model]\nn_layer = 99999999999999999999999\n")
    with deadline(60):
        code, _, err = cli(capsys, *TRAIN, "--config", str(tmp_path / "c.toml"), "--print-config")
    assert code == 2 and "model.n_layer is too large (got 99999999999999999999999" in one_line(err)


# --- SIGKILL at every point of a checkpoint write --------------------------------------------------

KILL_POINTS = [
    ("steplab.checkpoint", "save_file", 1),  # before the weights
    ("torch", "save", 1),  # weights written, optimizer state not yet
    ("torch", "save", 2),  # before the RNG states
    ("steplab.checkpoint", "_sha256", 1),  # every file written, manifest not yet
    ("steplab.checkpoint", "publish", 1),  # complete and fsynced, not yet renamed
    ("steplab.atomic", "fsync_dir", 1),  # renamed into place, the directory not yet fsynced
    ("steplab.checkpoint", "prune", 1),  # published, older ones not yet pruned
    ("steplab.rundir", "write_file", 1),  # run.json being replaced
]


def killed_at(module: str, name: str, n: int, argv: list[str]) -> int:
    """Run `steplab ARGV` in a forked child that SIGKILLs itself at the n-th call of module.name."""
    pid = os.fork()
    if pid == 0:
        import importlib

        try:
            mod = importlib.import_module(module)
            original, calls = getattr(mod, name), [0]

            def wrapper(*a: object, **k: object) -> object:
                calls[0] += 1
                if calls[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                return original(*a, **k)

            setattr(mod, name, wrapper)
            os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
            main(argv)
        finally:
            os._exit(99)
    return os.waitpid(pid, 0)[1]


@reliability(group="kill -9", faults=len(KILL_POINTS), kills=len(KILL_POINTS))
def test_sigkill_at_every_point_of_a_checkpoint_write_keeps_a_valid_one(
    run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case: SIGKILL at each point of writing a checkpoint; a valid one is always there and the run resumes."""
    argv = [*TRAIN, "--train.max-steps", "8", "--run-dir", str(run), "--resume"]
    for module, name, n in KILL_POINTS:
        before = ckpt.list_steps(run / "checkpoints")
        status = killed_at(module, name, n, argv)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (module, name, n, status)
        newest = ckpt.latest(run)  # the newest checkpoint that verifies: never a half-written one
        assert ckpt.list_steps(run / "checkpoints")[-1] >= before[-1]
        ckpt.verify(newest)
    code, out, err = cli(capsys, *argv)
    assert code == 0 and "finished: 8 steps" in out, err
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
