"""Every instrument works on a fine-tune (`--init-from`): lr-find, batch-find, compare, tune, the guard,
report, doctor, eval and sample, on a transformers model made and saved here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from steplab.cli.main import main

transformers = pytest.importorskip("transformers")

from test_pretrained import NEW_TEXT, SHAPE, make_pretrained  # noqa: E402  (the same models)

FAST = ["--quiet", "--train.tensorboard", "false", "--train.threads", "1", "--train.dtype", "float32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ft")
    data = root / "code.txt"
    data.write_text(NEW_TEXT)
    return make_pretrained(root / "llama", "llama", SHAPE["llama"]), data


def common(setup: tuple[Path, Path], *, evaluates: bool = True) -> list[str]:
    init, data = setup
    windows = ["--eval.max-windows", "8"] if evaluates else []
    return ["--init-from", str(init), "--data", str(data), *windows, "--train.batch-size", "4"]


def test_lr_find_and_batch_find(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "lr-find",
        *common(setup, evaluates=False),
        "--steps",
        "30",
        "--out",
        str(tmp_path / "lr"),
        "--train.threads",
        "1",
    ]
    assert main(args) == 0
    res = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert len(res["lrs"]) >= 10 and res["suggestion"]["lr"] > 0
    args = [
        "batch-find",
        *common(setup, evaluates=False),
        "--warmup-steps",
        "3",
        "--rounds",
        "3",
        "--out",
        str(tmp_path / "b.json"),
    ]
    assert main([*args, "--train.threads", "1"]) == 0
    assert json.loads((tmp_path / "b.json").read_text())


def test_compare_adamw_and_muon(setup: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = [
        "compare",
        *common(setup),
        "--vary",
        "optim.name=adamw,muon",
        "--train.max-steps",
        "6",
        "--out",
        str(out),
    ]
    assert main([*args, *FAST]) == 0
    configs = [p.read_text() for p in out.rglob("config.toml")]
    assert len(configs) >= 2 and all("init_from" in c and 'kind = "pretrained"' in c for c in configs)


def test_tune(setup: tuple[Path, Path], tmp_path: Path) -> None:
    space = tmp_path / "space.toml"
    space.write_text('[optim.lr]\ntype = "log_float"\nlow = 1e-4\nhigh = 1e-2\n')
    args = ["tune", *common(setup), "--space", str(space), "--trials", "2", "--train.max-steps", "4"]
    assert main([*args, "--dir", str(tmp_path / "study"), *FAST]) == 0
    assert "init_from" in (tmp_path / "study" / "best.toml").read_text()


def test_guard_report_doctor_eval_sample(setup: tuple[Path, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        *common(setup),
        "--run-dir",
        str(run),
        "--train.max-steps",
        "6",
        "--guard.policy",
        "rollback",
    ]
    assert main([*args, "--checkpoint.every", "3", *FAST]) == 0
    assert main(["eval", "--run", str(run)]) == 0
    assert main(["sample", "--run", str(run), "--prompt", "def", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert main(["doctor", str(run)]) in (0, 1)
    report = tmp_path / "report.html"
    assert (
        main(["report", str(run), "--out", str(report), "--samples", "1", "--sample-tokens", "8", "--quiet"])
        == 0
    )
    assert "init_from" in report.read_text()
