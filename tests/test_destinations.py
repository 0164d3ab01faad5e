"""The property: for every command that writes, an unwritable, full or missing destination gives
a non-zero exit, one error line on stderr (the last, after any progress printed before the
fault), no traceback, every file that was there before (in the run read, its parent, and
around the destination) keeps its sha256, and no half-written file is left (a new file, if
any, is empty: Optuna creates its journal before writing to it)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from faultfs import fill, read_only, tmpfs
from steplab.cli.main import main

TINY = ["--preset", "tiny", "--train.tensorboard", "false", "--eval.every", "0"]
Argv = Callable[[Path, Path], list[str]]  # (run read, destination directory) -> argv

COMMANDS: dict[str, Argv] = {
    "train": lambda run, d: ["train", *TINY, "--quiet", "--train.max-steps", "2", "--run-dir", str(d / "run")],
    "export": lambda run, d: ["export", "--run", str(run), "--format", "safetensors", "--out", str(d / "export")],
    "data prepare": lambda run, d: ["data", "prepare", "--tokenizer", "byte", "--data.cache-dir", str(d / "cache")],
    "plot": lambda run, d: ["plot", str(run), "--out", str(d / "plot.png"), "--quiet"],
    "report": lambda run, d: ["report", str(run), "--out", str(d / "report.html"), "--samples", "0", "--quiet"],
    "lr-find": lambda run, d: ["lr-find", *TINY, "--steps", "12", "--lr-min", "1e-3", "--lr-max", "3", "--out", str(d / "lr-find")],
    "auto": lambda run, d: ["auto", "--budget", "20s", "--quiet", "--run-dir", str(d / "auto")],
    "batch-find": lambda run, d: [
        "batch-find", *TINY, "--warmup-steps", "1", "--rounds", "2", "--micro-batches", "2", "--out", str(d / "bf.json")
    ],
    "coord-check": lambda run, d: [
        "coord-check", *TINY, "--widths", "16,32", "--steps", "1", "--parametrization", "mup", "--out", str(d / "cc")
    ],
    "transfer": lambda run, d: ["transfer", "--from", str(run / "config.toml"), "--width", "64", "--out", str(d / "t.toml")],
    "tune": lambda run, d: [
        "tune", *TINY, "--space", str(run.parent / "space.toml"), "--trials", "1", "--train.max-steps", "2",
        "--dir", str(d / "study"), "--quiet",
    ],
    "compare": lambda run, d: [
        "compare", *TINY, "--vary", "optim.name=adamw,sgd", "--train.max-steps", "2", "--out", str(d / "cmp"), "--quiet"
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run the commands read (with a tune space beside it)."""
    root = tmp_path_factory.mktemp("source")
    run = root / "run"
    with pytest.MonkeyPatch.context() as mp:  # the session's token cache (conftest sets it per test)
        mp.setenv(
            "STEPLAB_CACHE",
            os.environ.get("STEPLAB_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "steplab-cache"),
        )
        assert main(["train", *TINY, "--quiet", "--train.max-steps", "3", "--run-dir", str(run)]) == 0
    (root / "space.toml").write_text('[optim.lr]\ntype = "log_float"\nlow = 1e-3\nhigh = 1e-2\n')
    (root / "notes.md").write_text("the user's own file beside the run")
    return run


def destination(kind: str, tmp_path: Path, stack: ExitStack) -> Path:
    """A directory that is read-only, full, or missing (under a regular file), holding the user's files."""
    if kind == "missing":
        (tmp_path / "notes.txt").write_text("a regular file where a directory is expected")
        return tmp_path / "notes.txt" / "out"
    d = tmp_path / "dest"
    d.mkdir()
    if kind == "read-only":
        (d / "mine.txt").write_text("the user's")
        return stack.enter_context(read_only(d))
    fs = stack.enter_context(tmpfs(d, "512k"))
    (fs / "mine.txt").write_text("the user's")
    fill(fs)
    return fs


def hashes(*roots: Path) -> dict[str, str]:
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def dest(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    with ExitStack() as stack:
        yield destination(request.param, tmp_path, stack)


@pytest.mark.reliability(group="destination", faults=1)
@pytest.mark.parametrize("dest", ["read-only", "full", "missing"], indirect=True)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_fails_cleanly_on_a_bad_destination(
    command: str, dest: Path, source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Case: a command writing to an unwritable, full or missing destination."""
    capsys.readouterr()
    watched = (source.parent, tmp_path)
    before = hashes(*watched)
    try:
        code = main(COMMANDS[command](source, dest))
    except SystemExit as e:
        code = int(e.code or 0)
    err = capsys.readouterr().err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    # one error line, the last (after whatever progress the command printed before the fault)
    assert code != 0 and len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    after = hashes(*watched)
    assert {p: h for p, h in after.items() if p in before} == before  # nothing that was there changed
    new = [p for p in after if p not in before]
    assert all(Path(p).stat().st_size == 0 for p in new), new  # and nothing half-written was left
