"""compare: the plan (variants, learning rates, budgets), the statistics, and an end-to-end run
that is resumed after an interruption and re-run without retraining."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.errors import ConfigError
from steplab.optim import DEFAULT_LR
from steplab.presets import get_preset
from steplab.reports.compare import results_table
from steplab.reports.labels import variant_label
from steplab.tools.compare import (
    Budget,
    RunResult,
    aggregate,
    make_plan,
    parse_variant,
    parse_vary,
    peak_memory,
    plan_variants,
    read_run,
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
    b, a = rows[1], rows[2]
    assert b.diff_vs_best == pytest.approx(0.005) and b.diff_low < 0 < b.diff_high  # not significant
    assert a.diff_vs_best == pytest.approx(0.11) and 0 < a.diff_low < 0.11 < a.diff_high  # worse
    table = results_table(rows, target=None)
    cells = {row[1]: row for row in table.rows}
    assert cells["c"][4:6] == ["best", "-"]
    assert cells["a"][4].startswith("worse (p=0.0") and cells["a"][5].startswith("+0.1100 [+0.")
    assert cells["b"][4].startswith("not significant (p=") and cells["d"][3] == "diverged"
    one_seed = aggregate([_r("a", 0, 1.5), _r("b", 0, 1.4)])
    assert results_table(one_seed, target=None).rows[1][4:6] == ["n/a (1 seed)", "+0.1000"]


def test_memory_comes_from_the_summary_or_the_metrics(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    records = [{"step": 5, "loss": 3.0, "rss_mb": 410.0}, {"step": 10, "loss": 2.9, "rss_mb": 455.5}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = {"status": "finished", "step": 10, "tokens": 640, "train_seconds": 2.0, "val_loss": 2.8}
    (run / "summary.json").write_text(json.dumps(summary))
    res = read_run(run, label="a", seed=0, lr=1e-3, lr_source="set", target=None)
    assert (res.peak_mem_mb, res.mem_kind, res.optimizer_state_mb) == (455.5, "process_rss", None)
    assert res.tokens_per_second == 320 and res.val_loss == 2.8
    # The loop's own figures, when summary.json has them, win over the sampled records.
    summary |= {"peak_mem_mb": 812.0, "optimizer_state_mb": 6.18}
    (run / "summary.json").write_text(json.dumps(summary))
    res = read_run(run, label="a", seed=0, lr=1e-3, lr_source="set", target=None)
    assert (res.peak_mem_mb, res.mem_kind, res.optimizer_state_mb) == (812.0, "cuda_max_allocated", 6.18)
    assert peak_memory({}, []) == (None, None)


def test_legends_say_what_a_variant_sets() -> None:
    named = parse_variant(["seed_adamw", "optim.name=adamw", "optim.lr=1e-3", "optim.eps=1e-8"])
    assert variant_label(named.label, named.overrides, named=True, lr=1e-3) == "AdamW lr=1e-3 (seed)"
    (muon,) = [v for v in plan_variants(parse_vary(["optim.name=adamw,muon"])) if v.label == "muon"]
    assert variant_label(muon.label, muon.overrides, named=False, lr=0.01) == "Muon lr=0.01"
    (mlp,) = plan_variants(parse_vary(["model.mlp=swiglu"]))
    assert variant_label(mlp.label, mlp.overrides, named=False, lr=3e-3) == "mlp=swiglu"
    readable = parse_variant(["AdamW (the seed's)", "optim.name=adamw"])
    assert variant_label(readable.label, readable.overrides, named=True, lr=1e-3) == "AdamW (the seed's)"


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
    # Not a terminal: plain lines, no control codes; the table is Markdown, as in compare.md.
    assert "\x1b" not in captured.err + captured.out
    assert captured.err.startswith("compare: 2 variants x 2 seeds = 4 runs; 0 done;")
    assert "compare [1/4] adamw seed 1337  lr 0.003  ETA -" in captured.err
    assert re.search(r"compare \[4/4\] sgd seed 1338: finished, val loss \d\.\d{4}, 0:\d\d", captured.err)
    assert "| rank | variant | lr | final val loss | vs best (p) | gap [95% CI] |" in captured.out
    assert "| 1 | " in captured.out and "report:" in captured.out
    for f in ("compare.md", "results.json", "loss_vs_time.png", "loss_vs_tokens.png"):
        assert (out / f).stat().st_size > 100, f
    md = (out / "compare.md").read_text()
    assert md.startswith("# steplab compare") and "## Results" in md and "seeds 1337, 1338" in md
    assert "![loss_vs_time](loss_vs_time.png)" in md and captured.out.split("report:")[0].strip() in md
    results = json.loads((out / "results.json").read_text())
    assert {v["label"] for v in results["variants"]} == {"adamw", "sgd"}
    assert all(len(v["runs"]) == 2 and v["mean"] > 0 for v in results["variants"])
    second = results["variants"][1]
    assert second["diff_low"] < second["diff_vs_best"] < second["diff_high"]  # the CI holds the gap
    assert all(r["mem_kind"] == "process_rss" and r["peak_mem_mb"] > 0 for r in second["runs"])
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
    assert "3 done" in err and "compare [4/4] sgd seed 1338  lr 0.1  (resuming)" in err
    assert json.loads((run / "summary.json").read_text())["val_loss"] == before  # exact resume
    assert (out / "runs" / "adamw" / "seed-1337" / "metrics.jsonl").stat().st_mtime_ns == untouched

    # The same directory with other settings is refused (one line, exit 2).
    assert main([*argv[:-2], "--train.max-steps", "12", "--out", str(out)]) == 2
    assert "holds a run with other settings (train.max_steps: 10 there, 12 now)" in capsys.readouterr().err


def test_compare_is_split_by_concept() -> None:
    """Planning, running and results are modules of their own; the report lives in reports/,
    and `compare()` itself is a short driver."""
    import inspect

    from steplab.tools.compare import plan, results, run

    assert (
        plan.make_plan is make_plan
        and results.aggregate is aggregate
        and run.compare.__module__ == run.__name__
    )
    assert len(inspect.getsource(run.compare).splitlines()) <= 80
    assert not hasattr(run, "Resources")  # memory comes from the run's own records
    source = "".join(inspect.getsource(m) for m in (plan, results, run))
    assert "from steplab.reports" not in source  # tools never import the reports layer
