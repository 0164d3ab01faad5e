"""The run directory: damaged files read as absence, a user's folder is never written into, an
overwrite removes only steplab's files, names stay inside runs/, and export --overwrite
replaces only an earlier export."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import pytest

from helpers import cli
from steplab.cli.main import main
from steplab.config import RunConfig
from steplab.errors import SteplabError
from steplab.locks import LOCK_NAME
from steplab.loop.fit import train
from steplab.rundir import (
    RunDir,
    finite_number,
    is_steplab_run,
    json_number,
    named_run_dir,
    read_metrics,
    read_number,
    read_run,
)

TRAIN = ["train", "--preset", "tiny", "--quiet", "--train.tensorboard", "false", "--train.max-steps", "3"]


def hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots` (the evidence that nothing was touched)."""
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for root in roots
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    r = tmp_path / "runs" / "r"
    assert main([*TRAIN, "--run-dir", str(r)]) == 0
    capsys.readouterr()
    return r


# --- numbers and damaged files -------------------------------------------------------------


def test_numbers_round_trip_through_metrics_jsonl() -> None:
    assert json_number(1.5) == 1.5 and json_number(math.inf) == "inf" and json_number(math.nan) == "nan"
    assert read_number("nan") != read_number("nan") and read_number("-inf") == -math.inf
    assert read_number(True) is None and read_number("abc") is None and read_number(3) == 3.0
    assert finite_number("inf") is None and finite_number(2) == 2.0 and finite_number(None) is None


@pytest.mark.reliability(group="damaged artefact", faults=1)
def test_damaged_metrics_lines_are_skipped_with_one_warning(tmp_path: Path) -> None:
    """Case: metrics.jsonl with non-UTF-8 bytes, a JSON array, a string step and a torn last line."""
    p = tmp_path / "metrics.jsonl"
    p.write_bytes(
        b'{"step": 1, "loss": 3.0}\n'
        b'{"step": 2, "loss": 2.9, "note": "\xff\xfe"}\n'  # not UTF-8
        b"[1, 2, 3]\n"  # a JSON array
        b'{"step": "3", "loss": 2.8}\n'  # a step of the wrong type
        b'{"step": 4, "loss": {"x": 1}}\n'  # a value of the wrong type
        b'{"step": 5, "loss": "nan"}\n'  # a non-finite loss as steplab writes it: kept
        b'{"step": 6, "lo'  # torn: a killed writer, dropped silently
    )
    with pytest.warns(UserWarning, match=r"skipped 4 damaged lines \(first: line 2\)"):
        records = read_metrics(p)
    assert [r["step"] for r in records] == [1, 5]


@pytest.mark.reliability(group="damaged artefact", faults=1)
def test_damaged_run_files_read_as_absence(run: Path) -> None:
    """Case: run.json fields of the wrong type, summary.json not an object, config.toml not TOML."""
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "environment": [1], "params": "many", "status": 7}))
    (run / "summary.json").write_text("[]")
    (run / "config.toml").write_bytes(b"\xff not toml")
    with pytest.warns(UserWarning, match="ignored damaged fields environment, params, status"):
        files = read_run(run)
    assert "environment" not in files.info and files.summary == {} and files.config == {}
    assert files.records  # the metrics are intact


@pytest.mark.parametrize("command", ["runs", "plot", "report", "doctor"])
@pytest.mark.reliability(group="damaged artefact", faults=1)
def test_readers_survive_damaged_metrics(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Case: runs/plot/report/doctor on a run whose metrics.jsonl holds non-UTF-8 bytes and a JSON array."""
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(b'{"step": 9, "loss": 1.0, "x": "\xff"}\n[1, 2]\n{"step": "x"}\n')
    (run / "run.json").write_text('{"status": "finished", "environment": "broken", "params": [1]}')
    argv = {
        "runs": ["runs", str(run.parent)],
        "plot": ["plot", str(run), "--out", str(tmp_path / "p.png"), "--quiet"],
        "report": ["report", str(run), "--out", str(tmp_path / "r.html"), "--samples", "0", "--quiet"],
        "doctor": ["doctor", str(run)],
    }[command]
    code, _, err = cli(capsys, *argv)
    assert code == 0, err
    assert "Traceback" not in err and all(line.startswith("warning: ") for line in err.splitlines())


# --- a user's folder is never written into --------------------------------------------------


@pytest.mark.parametrize("flags", [[], ["--overwrite"], ["--resume"]], ids=["plain", "overwrite", "resume"])
@pytest.mark.reliability(group="data loss")
def test_a_users_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """Case: train --run-dir proj where proj/ holds the user's own config.toml."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "config.toml").write_text("# my own config\n")
    (proj / "metrics.jsonl").write_text("my own metrics\n")
    before = hashes(tmp_path)
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(proj), *flags)
    assert code == 2 and err.count("\n") == 1
    assert "is not empty and is not a steplab run (it holds config.toml, metrics.jsonl)" in err
    assert hashes(tmp_path) == before and not (proj / LOCK_NAME).exists()


def test_an_empty_folder_is_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    code, out, _ = cli(capsys, *TRAIN, "--run-dir", str(tmp_path / "empty"))
    assert code == 0 and is_steplab_run(tmp_path / "empty")
    assert not (tmp_path / "empty" / LOCK_NAME).exists()  # released and removed at the end


@pytest.mark.reliability(group="data loss")
def test_overwrite_removes_only_steplab_files(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Case: train --overwrite on a run holding the user's notes: the notes stay."""
    (run / "notes.txt").write_text("mine")
    (run / "analysis").mkdir()
    (run / "analysis" / "fig.png").write_bytes(b"png")
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(run), "--overwrite")
    assert code == 0, err
    assert (run / "notes.txt").read_text() == "mine" and (run / "analysis" / "fig.png").read_bytes() == b"png"


@pytest.mark.reliability(group="data loss")
def test_resume_and_overwrite_together_are_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = hashes(run)
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(run), "--resume", "--overwrite")
    assert code == 2 and "--resume and --overwrite contradict each other" in err and err.count("\n") == 1
    assert hashes(run) == before


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/../../x", "~/x", "."])
@pytest.mark.reliability(group="data loss")
def test_names_cannot_leave_the_runs_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Case: --name ../../x escaping runs/."""
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(capsys, *TRAIN, "--name", name)
    assert code == 2 and "must be a relative name inside runs/" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == [] and not Path("/tmp/x").exists()
    assert named_run_dir("runs", "group/a") == Path("runs/group/a")


@pytest.mark.reliability(group="data loss")
def test_a_created_directory_goes_again_when_nothing_was_written(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    """Case: a run refused after its directory was created and locked leaves no directory behind."""
    tiny_cfg.data.path = str(tmp_path / "missing.txt")
    with pytest.raises(SteplabError, match="does not exist"):
        train(tiny_cfg, tmp_path / "new" / "run")
    assert not (tmp_path / "new" / "run").exists()


def test_run_dir_open_locks_and_close_releases(tmp_path: Path) -> None:
    rd = RunDir(tmp_path / "r").open(resume=False, overwrite=False)
    lock = json.loads((tmp_path / "r" / LOCK_NAME).read_text())
    assert lock["pid"] == os.getpid() and "since" in lock
    with pytest.raises(SteplabError, match=rf"run directory {tmp_path / 'r'} is in use by pid {os.getpid()}"):
        RunDir(tmp_path / "r").open(resume=False, overwrite=False)
    rd.close()
    assert not (tmp_path / "r").exists()  # created, never written: gone again


# --- export --overwrite ---------------------------------------------------------------------


def export(run: Path, out: Path | str, *extra: str) -> list[str]:
    return ["export", "--run", str(run), "--format", "safetensors", "--out", str(out), *extra]


@pytest.mark.parametrize("where", ["cwd", "run", "parent", "grandparent", "home", "root", "user-folder"])
@pytest.mark.reliability(group="data loss")
def test_export_overwrite_never_removes_what_steplab_did_not_write(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Case: export --out . / the run / its parents / $HOME / / / a user's folder, with --overwrite."""
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.md").write_text("mine")
    monkeypatch.chdir(tmp_path / "work")
    out = {
        "cwd": ".",
        "run": run,
        "parent": run.parent,
        "grandparent": tmp_path,
        "home": home,
        "root": "/",
        "user-folder": tmp_path / "work",
    }[where]
    before = hashes(tmp_path)
    code, _, err = cli(capsys, *export(run, out, "--overwrite"))
    assert code == 2 and err.count("\n") == 1, err
    assert "steplab never replaces it" in err or "was not written by steplab" in err
    assert hashes(tmp_path) == before


@pytest.mark.reliability(group="data loss")
def test_export_overwrite_replaces_an_earlier_export_only(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "export"
    assert cli(capsys, *export(run, out))[0] == 0
    listed = json.loads((out / "steplab-export.json").read_text())["files"]
    assert sorted(listed) == ["config.json", "model.safetensors", "tokenizer.json"]
    code, _, err = cli(capsys, *export(run, out, "--overwrite"))
    assert code == 0, err  # its own earlier export: replaced
    (out / "README.md").write_text("my notes on this export")
    before = hashes(out)
    code, _, err = cli(capsys, *export(run, out, "--overwrite"))
    assert code == 2 and "holds files steplab did not write (README.md)" in err
    assert hashes(out) == before
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]
