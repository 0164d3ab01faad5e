"""`steplab doctor`: each diagnosis on a synthetic metric history, then on real tiny runs."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from steplab.cli.main import main
from steplab.loop.fit import train
from steplab.presets import tiny
from steplab.tools.doctor import diagnose, history

CONFIG = {"model": {"vocab_size": 65}, "optim": {"lr": 1e-3, "grad_clip": 1.0}}
Records = list[dict]


def healthy(steps: int = 600, every: int = 10, seed: int = 0) -> Records:
    """A run that converges: exponential descent, small noise, sane update sizes, evals that fall."""
    rng = random.Random(seed)
    out: Records = []
    for s in range(every, steps + 1, every):
        loss = 1.5 + 2.6 * math.exp(-s / 120) + rng.gauss(0, 0.02)
        out.append(
            {
                "step": s,
                "loss": loss,
                "lr": 1e-3,
                "grad_norm": 0.4 + rng.random() * 0.2,
                "update_ratio": 2e-3,
                "data_fraction": 0.02,
            }
        )
        if s % 100 == 0:
            out.append({"step": s, "val_loss": loss + 0.05})
    return out


def diverged() -> Records:
    out = [r for r in healthy() if r["step"] <= 300]
    for i, s in enumerate(range(310, 350, 10)):
        out.append({"step": s, "loss": 1.9 + i, "lr": 1e-3, "grad_norm": 2.0 * 3**i, "update_ratio": 0.01})
    out.append({"step": 350, "loss": "nan", "lr": 1e-3, "grad_norm": "nan"})
    return out


def spikes() -> Records:
    out = healthy()
    for r in out:
        if r["step"] in (250, 400, 520) and "loss" in r:
            r["loss"] *= 1.6
    return out


def lr_too_high() -> Records:
    out = healthy()
    for r in out:
        if "loss" in r:
            r["update_ratio"] = 0.12
            if r["step"] > 200:  # the loss climbs back up
                r["loss"] += 0.004 * (r["step"] - 200)
    return out


def lr_too_low() -> Records:
    out = []
    for s in range(10, 1001, 10):
        out.append({"step": s, "loss": 4.17 - 0.0003 * s, "lr": 1e-5, "grad_norm": 0.6, "update_ratio": 4e-5})
    return out


def plateau() -> Records:
    out = healthy()
    for r in out:
        if "loss" in r:
            r["loss"] = 2.0 + 2.0 * math.exp(-r["step"] / 40) + 0.002 * math.sin(r["step"])
    return out


def overfitting() -> Records:
    out = [r for r in healthy() if "val_loss" not in r]
    for i, s in enumerate(range(100, 601, 100)):
        out.append({"step": s, "val_loss": [2.6, 2.1, 1.95, 2.0, 2.1, 2.25][i]})
    return out


def clipping() -> Records:
    out = healthy()
    for r in out:
        if "loss" in r:
            r["grad_norm"] = 2.5
    return out


def data_bound() -> Records:
    out = healthy()
    for r in out:
        if "loss" in r:
            r["data_fraction"] = 0.6
    return out


def guard_gave_up() -> Records:
    out = [r for r in healthy() if r["step"] <= 300]
    out.append(
        {
            "step": 305,
            "event": "guard",
            "action": "give_up",
            "reason": "non-finite loss",
            "flagged_loss": "nan",
        }
    )
    return out


CASES: list[tuple[Callable[[], Records], str, set[str]]] = [
    (diverged, "diverged", {"lr_too_low", "plateau"}),
    (guard_gave_up, "diverged", {"lr_too_low"}),
    (spikes, "spikes", {"lr_too_low", "diverged"}),
    (lr_too_high, "lr_too_high", {"lr_too_low", "overfitting"}),
    (lr_too_low, "lr_too_low", {"lr_too_high", "plateau"}),
    (plateau, "plateau", {"lr_too_low", "lr_too_high"}),
    (overfitting, "overfitting", {"lr_too_high", "plateau"}),
    (clipping, "clipping", {"lr_too_high"}),
    (data_bound, "data_bound", {"lr_too_high", "lr_too_low"}),
]


def names(records: Records) -> list[str]:
    return [f.name for f in diagnose(history(records, CONFIG))]


def test_a_healthy_run_has_no_findings() -> None:
    assert names(healthy()) == []


@pytest.mark.parametrize(
    ("make", "expected", "not_expected"), CASES, ids=[c[1] + ":" + c[0].__name__ for c in CASES]
)
def test_each_diagnosis_on_a_synthetic_history(
    make: Callable[[], Records], expected: str, not_expected: set[str]
) -> None:
    found = names(make())
    assert expected in found
    assert not (set(found) & not_expected), found


def test_findings_carry_evidence_and_a_next_step() -> None:
    (f,) = [f for f in diagnose(history(diverged(), CONFIG)) if f.name == "diverged"]
    assert "loss became nan at step 350" in f.evidence and "grad norm before it: 54 at step 340" in f.evidence
    assert "--optim.lr" in f.next_step
    (f,) = [f for f in diagnose(history(overfitting(), CONFIG)) if f.name == "overfitting"]
    assert "1.95 (step 300) to 2.25 (step 600)" in f.evidence and "--checkpoint best" in f.next_step


@pytest.fixture(scope="module")
def lr_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny preset at its own learning rate, x100 and /100."""
    root = tmp_path_factory.mktemp("doctor")
    runs = {}
    for name, mult in [("base", 1.0), ("x100", 100.0), ("d100", 0.01)]:
        cfg = tiny()
        cfg.train.progress, cfg.train.tensorboard, cfg.train.log_every = False, False, 5
        cfg.data.cache_dir = str(tmp_path_factory.getbasetemp() / "steplab-cache")
        cfg.optim.lr = 1e-3 * mult
        train(cfg, root / name)
        runs[name] = root / name
    return runs


def test_doctor_names_the_learning_rate_on_real_runs(
    lr_runs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def findings(run: Path) -> list[str]:
        assert main(["doctor", str(run), "--json"]) == 0
        return [f["name"] for f in json.loads(capsys.readouterr().out)["findings"]]

    assert "lr_too_high" in findings(lr_runs["x100"]) and "lr_too_low" not in findings(lr_runs["x100"])
    assert "lr_too_low" in findings(lr_runs["d100"]) and "lr_too_high" not in findings(lr_runs["d100"])
    assert not {"lr_too_high", "lr_too_low"} & set(findings(lr_runs["base"]))
    assert main(["doctor", str(lr_runs["d100"])]) == 0
    out = capsys.readouterr().out
    assert "- learning rate likely too low (slow progress): median update-to-weight ratio" in out
    assert "next: multiply --optim.lr by 3 to 10 (now 1e-05)" in out


def test_doctor_on_a_missing_run_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: doctor: {tmp_path / 'nope'} is not a run directory\n"
    (tmp_path / "empty").mkdir()
    assert main(["doctor", str(tmp_path / "empty")]) == 2
    assert "has no metrics.jsonl records" in capsys.readouterr().err
