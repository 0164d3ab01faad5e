"""compare: the plan (variants, learning rates, budgets), the statistics, and an end-to-end run
that is resumed after an interruption and re-run without retraining."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.errors import ConfigError
from steplab.optim import DEFAULT_LR
from steplab.presets import get_preset
from steplab.tools.compare import (
    Budget,
    RunResult,
    aggregate,
    make_plan,
    parse_variant,
    parse_vary,
    plan_variants,
)


def test_vary_is_a_cartesian_product_plus_named_variants() -> None:
    vary = parse_vary(["optim.name=adamw,muon", "model.mlp=gelu,swiglu,relu2"])
    named = parse_variant(["seed_adamw", "optim.name=adamw", "optim.lr=1e-3"])
    variants = plan_variants(vary, [named])
    assert [v.label for v in variants][:3] == ["adamw, gelu", "adamw, swiglu", "adamw, relu2"]
    assert len(variants) == 7 and variants[-1].label == "seed_adamw"
    assert variants[4].overrides == (("optim.name", "muon"), ("model.mlp", "swiglu"))
    assert plan_variants([])[0].label == "base"


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["optim.name"], "--vary must be KEY=V1,V2"),
        (["optim.name="], "--vary must be KEY=V1,V2"),
        (["optim.name=a", "optim.name=b"], "given twice"),
        (["optim.name=adamw,adamw"], "listed twice"),
    ],
)
def test_bad_vary_is_a_config_error(specs: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_vary(specs)


def test_learning_rate_rule_and_budget() -> None:
    base = get_preset("shakespeare_char")
    variants = plan_variants(parse_vary(["optim.name=adamw,lion"]))
    plan = make_plan(base, variants, seeds=2, budget=Budget(seconds=120), lr_fixed=False, target=2.0)
    assert plan.seeds == [1337, 1338]
    lion = plan.configs["lion", 1338]
    assert lion.optim.lr == DEFAULT_LR["lion"] and lion.train.seed == 1338
    assert plan.configs["adamw", 1337].optim.lr == DEFAULT_LR["adamw"]
    assert (lion.train.max_seconds, lion.train.max_steps, lion.train.max_tokens) == (120, None, None)
    assert lion.eval.every == base.eval.every and lion.checkpoint.every == base.eval.every
    # --optim.lr given: every variant keeps it.
    plan = make_plan(base, variants, seeds=1, budget=Budget(), lr_fixed=True)
    assert plan.configs["lion", 1337].optim.lr == base.optim.lr and plan.lr_sources["lion"] == "set"
    # The optimizer does not vary: the config's learning rate.
    base.optim.lr = 2e-3
    plan = make_plan(
        base, plan_variants(parse_vary(["model.mlp=gelu,relu2"])), seeds=1, budget=Budget(), lr_fixed=False
    )
    assert plan.configs["relu2", 1337].optim.lr == 2e-3
    with pytest.raises(ConfigError, match="unknown optimizer 'adamx'"):
        make_plan(
            base, plan_variants(parse_vary(["optim.name=adamx"])), seeds=1, budget=Budget(), lr_fixed=False
        )


def _r(label: str, seed: int, loss: float | None, status: str = "finished") -> RunResult:
    return RunResult(label, seed, "", status, 1e-3, "set", val_loss=loss)


def test_aggregate_ranks_and_tests_against_the_best() -> None:
    rows = aggregate(
        [_r("a", 0, 1.50), _r("a", 1, 1.52), _r("b", 0, 1.40), _r("b", 1, 1.41), _r("c", 0, 1.405)]
        + [_r("c", 1, 1.395), _r("d", 0, None, "diverged"), _r("d", 1, None, "diverged")]
    )
    assert [r.label for r in rows] == ["c", "b", "a", "d"] and [r.rank for r in rows] == [1, 2, 3, None]
    assert rows[1].significant is False and rows[2].significant is True and rows[3].p_vs_best is None


def test_compare_end_to_end_resumes_and_skips(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cmp"
    argv = ["compare", "--preset", "tiny", "--model.n-layer", "1", "--model.n-embd", "16"]
    argv += [
        "--train.batch-size",
        "4",
        "--train.tensorboard",
        "false",
        "--eval.every",
        "5",
        "--train.log-every",
        "5",
    ]
    argv += ["--vary", "optim.name=adamw,sgd", "--seeds", "2", "--target-loss", "4.1"]
    argv += ["--train.max-steps", "10"]
    argv += ["--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "compare [1/4] adamw  seed 1337" in captured.err and "compare [4/4] sgd  seed 1338" in captured.err
    assert "| 1 |" in captured.out and "report:" in captured.out
    for f in ("compare.md", "results.json", "loss_vs_time.png", "loss_vs_tokens.png"):
        assert (out / f).stat().st_size > 100, f
    results = json.loads((out / "results.json").read_text())
    assert {v["label"] for v in results["variants"]} == {"adamw", "sgd"}
    assert all(len(v["runs"]) == 2 and v["mean"] > 0 for v in results["variants"])
    run = out / "runs" / "sgd" / "seed-1338"
    assert json.loads((run / "summary.json").read_text())["step"] == 10
    assert ckpt.list_steps(run / "checkpoints") == [5, 10]
    before = json.loads((run / "summary.json").read_text())["val_loss"]

    # An interrupted run: the final checkpoint and summary are gone, the step-5 checkpoint remains.
    (run / "summary.json").unlink()
    shutil.rmtree(run / "checkpoints" / "step_00000010")
    untouched = (out / "runs" / "adamw" / "seed-1337" / "metrics.jsonl").stat().st_mtime_ns
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "3 done" in err and "(resuming)" in err and "[4/4] sgd  seed 1338" in err
    assert json.loads((run / "summary.json").read_text())["val_loss"] == before  # exact resume
    assert (out / "runs" / "adamw" / "seed-1337" / "metrics.jsonl").stat().st_mtime_ns == untouched

    # The same directory with other settings is refused (one line, exit 2).
    assert main([*argv[:-2], "--train.max-steps", "12", "--out", str(out)]) == 2
    assert "holds a run with other settings (train.max_steps: 10 there, 12 now)" in capsys.readouterr().err
