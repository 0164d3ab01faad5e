"""The train, sample and eval commands end to end (the typed parsers: tests/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steplab.cli import main


def test_train_sample_eval_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = str(tmp_path / "run")
    assert (
        main(["train", "--preset", "tiny", "--run-dir", run, "--quiet", "--train.tensorboard", "false"]) == 0
    )
    out = capsys.readouterr().out
    assert "finished: 50 steps" in out and "val_loss" in out
    assert main(["sample", "--run", run, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1"]) == 0
    s1 = capsys.readouterr().out
    assert main(["sample", "--run", run, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == s1 and s1.startswith("ROMEO:") and len(s1) > 40
    assert (
        main(
            [
                "sample",
                "--run",
                run,
                "--max-new-tokens",
                "20",
                "--temperature",
                "0.9",
                "--top-k",
                "5",
                "--top-p",
                "0.9",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["eval", "--run", run, "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert res["val_loss"] == pytest.approx(summary["val_loss"], abs=1e-6)
    assert res["val_bpb"] > 0 and res["val_ppl"] > 1


def test_sample_and_eval_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sample", "--run", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--run", str(tmp_path / "empty")]) == 2
    assert "no checkpoint found" in capsys.readouterr().err
