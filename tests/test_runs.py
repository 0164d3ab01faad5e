"""`steplab runs`: the table of runs, and the status of runs whose process died."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from steplab.cli.main import main
from steplab.config import RunConfig
from steplab.errors import SteplabError
from steplab.loop.fit import train
from steplab.loop.hooks import Callback
from steplab.reports.runs import find_runs, format_table, human, labels_for, load_run
from steplab.rundir import process_identity


def two_runs(root: Path, cfg: RunConfig) -> tuple[Path, Path]:
    cfg.train.max_steps, cfg.eval.every = 20, 10
    train(cfg, root / "a")
    cfg.optim.name, cfg.optim.lr = "sgd", 0.05
    train(cfg, root / "group" / "b")
    return root / "a", root / "group" / "b"


def test_runs_table_and_json(tmp_path: Path, tiny_cfg: RunConfig, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = two_runs(tmp_path / "runs", tiny_cfg)
    (tmp_path / "runs" / "not-a-run").mkdir()
    assert find_runs(tmp_path / "runs") == [a, b]
    assert main(["runs", str(tmp_path / "runs"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["a", "group/b"]
    assert [r["optimizer"] for r in rows] == ["adamw", "sgd"]
    assert all(r["status"] == "finished" and r["steps"] == 20 and r["tokens"] == 20 * 8 * 32 for r in rows)
    evals = [rec for rec in load_run(a).records if "val_loss" in rec]
    assert rows[0]["best_val_loss"] == min(e["val_loss"] for e in evals)
    assert rows[0]["params"] > 0 and rows[0]["val_bpb"] > 0 and rows[0]["wall_seconds"] > 0
    assert main(["runs", str(tmp_path / "runs"), "--sort", "loss"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "preset", "optimizer", "params"] and "status" in lines[0]
    best_first = sorted(rows, key=lambda r: r["best_val_loss"])[0]["name"]
    assert lines[1].startswith(best_first) and "finished" in lines[1] and "5.12k" in lines[1]


def test_a_running_run_whose_process_is_gone_shows_as_interrupted(
    tmp_path: Path, tiny_cfg: RunConfig
) -> None:
    tiny_cfg.train.max_steps, tiny_cfg.eval.every = 10, 0
    train(tiny_cfg, tmp_path / "r")
    info_path = tmp_path / "r" / "run.json"
    info = json.loads(info_path.read_text())
    assert info["pid"] == os.getpid() and info["host"]  # recorded by the training loop

    def status_with(**changes: object) -> str:
        info_path.write_text(json.dumps({**info, "status": "running", **changes}))
        return load_run(tmp_path / "r").status

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert status_with(pid=dead.pid, pid_start=None) == "interrupted"
    assert status_with(**process_identity()) == "running"  # this very process is alive
    if process_identity()["pid_start"] is not None:  # Linux: a reused pid is told apart
        assert status_with(pid=os.getpid(), pid_start=1) == "interrupted"
    assert status_with(pid=dead.pid, host="another-machine") == "running"  # cannot tell: trust the file


class Boom(Callback):
    def on_log(self, s, state, record) -> None:  # noqa: ANN001
        raise RuntimeError("boom")


def test_a_crashed_run_says_so(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        train(tiny_cfg, tmp_path / "r", callbacks=[Boom()])
    assert load_run(tmp_path / "r").row()["status"] == "crashed"


def test_helpers_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert labels_for([Path("x/a"), Path("y/a"), Path("y/b")]) == ["x/a", "y/a", "y/b"]
    assert labels_for([Path("x/a"), Path("y/b")]) == ["a", "b"]
    assert [human(v) for v in (None, 512, 28576, 1.5e6, 124_439_808, 3e9)] == [
        "-",
        "512",
        "28.6k",
        "1.5M",
        "124M",
        "3B",
    ]
    table = format_table([{"name": "x", "params": 1000, "best_val_loss": None, "status": "running"}])
    assert table.splitlines()[1].split() == ["x", "-", "-", "1k", "-", "-", "-", "-", "-", "running"]
    with pytest.raises(SteplabError, match="not a steplab run directory"):
        load_run(tmp_path)
    assert main(["runs", str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["runs", str(tmp_path)]) == 0
    assert "no runs under" in capsys.readouterr().out
