"""The top-level handler: whatever a command raises is one line and an exit code; --debug shows the traceback."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest

from steplab.cli.errors import debug_requested, explain, run_command
from steplab.errors import DataError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def raising(e: BaseException):  # noqa: ANN201
    def command() -> int:
        raise e

    return command


@pytest.mark.parametrize(
    ("exc", "code", "text"),
    [
        (DataError("--data: x is empty"), 2, "--data: x is empty"),
        (OSError(errno.ENOSPC, "No space left on device", "/mnt/x"), 2, "/mnt/x: no space left on device"),
        (OSError(errno.EROFS, "Read-only file system", "/ro"), 2, "/ro: read-only file system"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), 2, "input/output error"),
        (Exception("Error while serializing: I/O error: No space left on device (os error 28)"), 2, "no space left"),
        (ModuleNotFoundError("No module named 'MySQLdb'", name="MySQLdb"), 2, "not installed: MySQLdb"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, "cannot decode input as UTF-8"),
        (json.JSONDecodeError("Expecting value", "x", 0), 2, "damaged JSON (Expecting value at line 1)"),
        (MemoryError(), 2, "out of memory"),
        (KeyError("bug"), 1, "internal error: KeyError: 'bug'"),
    ],
    ids=["steplab", "enospc", "erofs", "torch-write", "safetensors-write", "missing-module", "utf8", "json", "memory", "bug"],
)  # fmt: skip
def test_every_failure_is_one_line(
    exc: Exception, code: int, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_command(raising(exc), debug=False) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and text in err and "Traceback" not in err
    assert ("--debug" in err) == (code == 1)  # a bug says how to see more
    assert explain(exc)[1] == code


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STEPLAB_DEBUG", "0")  # and unset again after the test (the flag sets it to 1)
    debug, argv = debug_requested(["train", "--debug", "--quiet"])
    assert debug and argv == ["train", "--quiet"]
    assert run_command(raising(KeyError("bug")), debug=True) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: internal error: KeyError: 'bug'")
    monkeypatch.setenv("STEPLAB_DEBUG", "0")
    assert debug_requested(["runs"]) == (False, ["runs"])


def test_ctrl_c_is_130(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_command(raising(KeyboardInterrupt()), debug=False) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_a_real_command_with_debug(tmp_path: Path) -> None:
    """The flag anywhere on the command line, through the real entry point."""
    (tmp_path / "f").write_text("x")
    argv = [
        sys.executable,
        "-m",
        "steplab",
        "export",
        "--run",
        str(tmp_path),
        "--out",
        str(tmp_path / "f" / "o"),
    ]
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2 and plain.stderr.count("\n") == 1 and "Traceback" not in plain.stderr
    debug = subprocess.run(
        [*argv[:4], "--debug", *argv[4:]], capture_output=True, text=True, env=env, timeout=120
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr
    assert debug.stderr.splitlines()[-1] == plain.stderr.strip()
