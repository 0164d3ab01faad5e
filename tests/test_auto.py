"""`steplab auto`: the numerics of each decision, and the pipeline end to end on a tiny corpus."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import pytest

from steplab.auto.budget import Budget, Clock, parse_duration, parse_flops
from steplab.auto.choose_batch import best_batch
from steplab.auto.choose_optimizer import parabola_min, refine_lr
from steplab.auto.scaling import Candidate, Point, compute_optimal_size, fit_scaling_law
from steplab.auto.state import AutoState
from steplab.config import DataConfig
from steplab.errors import ConfigError

# --- budgets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300s", 300),
        ("10m", 600),
        ("2h", 7200),
        ("1d", 86400),
        ("1.5h", 5400),
        ("90", 90),
        (" 45 min ", 2700),
    ],
)
def test_budgets_parse_as_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10x", "-5m", "0s", "m", "1e400s"])
def test_a_bad_budget_is_one_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget"):
        parse_duration(text)


def test_flop_budgets() -> None:
    assert parse_flops("1e15") == 1e15
    for bad in ("lots", "-1", "inf"):
        with pytest.raises(ConfigError, match="--budget-flops"):
            parse_flops(bad)


def test_the_clock_carries_what_earlier_processes_spent() -> None:
    clock = Clock(Budget("seconds", 100.0, 0.25), spent_seconds=30.0)
    assert 30.0 <= clock.seconds < 31.0
    assert 69.0 < clock.remaining() <= 70.0 and clock.search_left() <= -5.0 + 1e-9


# --- the scaling law ---------------------------------------------------------------------------

LAW = {"e": 1.2, "a": 300.0, "alpha": 0.45, "b": 800.0, "beta": 0.4}


def law(n: float, d: float) -> float:
    return LAW["e"] + LAW["a"] * n ** -LAW["alpha"] + LAW["b"] * d ** -LAW["beta"]


def test_the_fit_recovers_a_known_law() -> None:
    points = [Point(n, d, law(n, d)) for n in (2e5, 6e5, 2e6) for d in (2e5, 5e5, 1e6, 3e6, 8e6)]
    fit = fit_scaling_law(points)
    assert fit is not None and fit.trusted and fit.r2 > 0.999
    for n, d in ((1e6, 2e7), (5e6, 1e7), (1e5, 1e5)):  # predictions, also a little outside the data
        assert fit.loss(n, d) == pytest.approx(law(n, d), rel=0.01)


def test_a_fit_from_two_sizes_is_not_trusted() -> None:
    points = [Point(n, d, law(n, d)) for n in (2e5, 6e5) for d in (2e5, 5e5, 1e6, 3e6)]
    fit = fit_scaling_law(points)
    assert fit is not None and not fit.trusted


def test_the_compute_optimal_size_is_the_argmin_of_the_law_at_each_sizes_speed() -> None:
    points = [Point(n, d, law(n, d)) for n in (2e5, 6e5, 2e6) for d in (2e5, 5e5, 1e6, 3e6, 8e6)]
    fit = fit_scaling_law(points)
    # bigger models are slower: tokens per second falls as 1/N
    cands = [Candidate(f"n{n:.0e}", n, 3e10 / n) for n in (2e5, 4e5, 8e5, 1.6e6, 3.2e6, 6.4e6)]
    seconds = 600.0
    choice = compute_optimal_size(
        fit, cands, seconds, proxy_best="n2e+05", proxy_seconds=10, seen_params=[1e6]
    )
    expected = min(cands, key=lambda c: law(c.params, c.tokens_per_second * seconds))
    assert choice.rule == "fit" and choice.name == expected.name
    assert "n6e+06" not in choice.predicted  # more than 4x beyond the largest size the fit saw


def test_without_a_trusted_fit_the_proxy_winner_grows_as_the_square_root_of_compute() -> None:
    cands = [Candidate(f"c{i}", 1e5 * 2**i, 1.0) for i in range(6)]  # 1e5 .. 3.2e6
    choice = compute_optimal_size(None, cands, 400.0, proxy_best="c0", proxy_seconds=25.0)
    assert choice.rule == "fallback" and choice.name == "c2"  # 1e5 * sqrt(16) = 4e5


# --- the other decisions' rules ---------------------------------------------------------------


def test_the_batch_that_reaches_a_loss_soonest() -> None:
    speeds = {8: 1000.0, 16: 1900.0, 32: 3000.0, 64: 3300.0, 128: 3400.0}
    assert best_batch(0.0, speeds) == 8  # no gradient noise: the smallest batch, most steps
    assert best_batch(20.0, speeds) == 32
    assert best_batch(1e6, speeds) == 128  # all noise: the fastest tokens/s
    for noise in (5.0, 50.0, 500.0):
        b = best_batch(noise, speeds)
        assert all((b + noise) / speeds[b] <= (k + noise) / v for k, v in speeds.items())


def test_the_learning_rate_parabola() -> None:
    assert parabola_min([0.0, 1.0, 2.0], [1.0, 0.0, 1.0]) == pytest.approx(1.0)
    assert parabola_min([0.0, 1.0, 2.0], [0.0, 1.0, 0.0]) is None  # opens downward
    lr, how = refine_lr([1e-3, 2e-3, 4e-3], [2.0, 1.9, 1.95])
    assert 1e-3 < lr < 4e-3 and "parabola" in how
    lr, how = refine_lr([1e-3, 2e-3, 4e-3], [2.0, 1.95, 1.9])  # best at the edge: taken as measured
    assert lr == 4e-3 and "edge" in how


# --- the pipeline -----------------------------------------------------------------------------


@pytest.fixture
def corpus(small_corpus: Path) -> Path:
    return small_corpus


def _start(corpus: Path, run_dir: Path, seconds: float, fraction: float = 0.5):  # noqa: ANN202
    from steplab.auto.run import start

    return start(DataConfig(path=str(corpus)), Budget("seconds", seconds, fraction), run_dir, progress=False)


def test_auto_end_to_end_on_a_tiny_corpus_ends_on_time(tmp_path: Path, corpus: Path) -> None:
    run = tmp_path / "auto"
    res = _start(corpus, run, 20.0)
    state = json.loads((run / "auto.json").read_text())
    names = [d["name"] for d in state["decisions"]]
    assert names == ["tokenizer", "optimizer", "size", "batch", "lr_check", "schedule"]
    assert res.status == "finished" and math.isfinite(state["final"]["val_bpb"])
    assert state["final"]["total_seconds"] <= 20.0 * 1.05  # ends on time
    for f in ("decisions.md", "report.html", "best.toml", "config.toml", "metrics.jsonl"):
        assert (run / f).is_file(), f
    md = (run / "decisions.md").read_text()
    assert all(f"## {i}. " in md for i in range(1, 7))
    # the final model is a normal run: eval works on it, and best.toml replays it
    from steplab.cli import main

    assert main(["eval", "--run", str(run)]) == 0
    assert main(["train", "--config", str(run / "best.toml"), "--print-config"]) == 0


def test_a_killed_search_resumes_after_its_last_decision(tmp_path: Path, corpus: Path) -> None:
    from steplab.auto import context
    from steplab.auto.run import resume

    run = tmp_path / "auto"
    pid = os.fork()
    if pid == 0:  # the child dies right after its first decision is written
        original = context.Context.record

        def record_then_die(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            original(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)

        context.Context.record = record_then_die  # type: ignore[method-assign]
        try:
            _start(corpus, run, 20.0)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    before = AutoState.load(run)
    assert [d.name for d in before.decisions] == ["tokenizer"]
    res = resume(run, progress=False)
    after = json.loads((run / "auto.json").read_text())
    assert after["decisions"][0] == json.loads(json.dumps(before.decisions[0].__dict__))  # not redone
    for name, proxy in before.proxies.items():  # finished proxies are not run again
        assert after["proxies"][name] == proxy
    assert [d["name"] for d in after["decisions"]][-1] == "schedule" and res.status == "finished"
    assert after["spent_seconds"] >= before.spent_seconds


def test_a_diverging_proxy_is_recorded_and_excluded(tmp_path: Path, corpus: Path, monkeypatch) -> None:  # noqa: ANN001
    from steplab.auto import choose_optimizer
    from steplab.auto.context import Context
    from steplab.auto.space import template
    from steplab.progress import ProgressView

    monkeypatch.setitem(choose_optimizer.DEFAULT_LR, "adamw", 200.0)  # every AdamW proxy blows up
    monkeypatch.setattr(choose_optimizer, "plan_points", lambda runs, n: (1, False))
    monkeypatch.setattr(choose_optimizer, "MIN_STEPS", 3)  # affordable however busy the machine is
    budget = Budget("seconds", 3600.0, 0.5)
    state = AutoState(budget={}, data={})
    cfg = template(DataConfig(path=str(corpus)))
    (tmp_path / "auto").mkdir()
    ctx = Context(tmp_path / "auto", budget, Clock(budget), state, cfg, ProgressView(100, "%", enabled=False))
    d = choose_optimizer.decide_optimizer(ctx, 12.0)
    adamw = [row for row in d.table[1:] if row[0] == "adamw"]
    assert adamw and all("excluded" in row[2] for row in adamw)
    assert d.choice["optim.name"] == "muon"
    from steplab.auto.context import Proxy

    assert all(not Proxy(**p).ok for n, p in state.proxies.items() if "adamw" in n)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["auto", "--budget", "ten minutes"], "--budget must be a duration"),
        (["auto"], "needs a budget"),
        (["auto", "--budget", "1m", "--budget-flops", "1e12"], "choose one"),
        (["auto", "--budget", "1m", "--data", "/nonexistent/corpus.txt"], "does not exist"),
        (["auto", "--budget", "1m", "--search-fraction", "1.5"], "--search-fraction"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    from steplab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_resume_refuses_a_directory_that_is_not_an_auto_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from steplab.cli import main

    assert main(["auto", "--resume", str(tmp_path)]) == 2
    assert "not a `steplab auto` run directory" in capsys.readouterr().err


def test_a_new_search_refuses_a_non_empty_directory(tmp_path: Path, corpus: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    from steplab.errors import SteplabError

    with pytest.raises(SteplabError, match="not empty"):
        _start(corpus, tmp_path, 20.0)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_the_lr_search_follows_a_minimum_past_the_edge_of_its_bracket(monkeypatch) -> None:  # noqa: ANN001
    from steplab.auto.choose_optimizer import LrSearch
    from steplab.auto.context import Proxy

    measured: list[float] = []

    def fake(self, name: str, lr: float, note: str) -> Proxy:  # noqa: ANN001
        measured.append(lr)
        bpb = 2.0 + (math.log(lr) - math.log(5e-3)) ** 2  # the best learning rate is 5e-3
        return Proxy(name, "finished", bpb, bpb, 1000, 1.0, 1.0, 1, 1.0)

    monkeypatch.setattr(LrSearch, "measure", fake)
    search = LrSearch(None, None, None, 1.0, 4, [])  # type: ignore[arg-type]
    lr, _, how = search.best_lr("adamw", [1e-3, 2e-3, 4e-3], "", extend=True)
    assert measured == [1e-3, 2e-3, 4e-3, 8e-3]  # the best was the upper edge: one step further
    assert lr == pytest.approx(5e-3, rel=1e-6) and "parabola" in how  # exact: a parabola in log lr
    measured.clear()
    lr, _, _ = search.best_lr("adamw", [1e-3, 2e-3, 4e-3], "", extend=False)
    assert measured == [1e-3, 2e-3, 4e-3] and lr == 4e-3


def test_every_lr_proxy_trains_on_the_same_tokens_however_the_stage_spent_its_time() -> None:
    """A stage that spent most of its allowance before its last optimizer (a slow range test)
    must not judge that optimizer on starved proxies: every proxy gets the first one's tokens,
    and never fewer than MIN_STEPS steps."""
    from types import SimpleNamespace

    from steplab.auto.choose_optimizer import LrSearch
    from steplab.auto.context import Proxy
    from steplab.auto.space import MIN_STEPS, template

    cfg = template(DataConfig())
    per_step = cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size
    now = [0.0]
    given: list[int] = []

    def proxy(name: str, c, *, tokens: int, params: int) -> Proxy:  # noqa: ANN001
        given.append(tokens)
        now[0] += 4.0  # each proxy takes 4 s of a 12 s allowance
        return Proxy(name, "finished", 2.0, 2.0, tokens, 1.0, 1.0, 1, 1.0)

    ctx = SimpleNamespace(
        clock=SimpleNamespace(spent=lambda: now[0]),
        tokens_for=lambda sp, share: int(share * 100 * per_step),  # 100 steps a second
        proxy=proxy,
    )
    search = LrSearch(ctx, cfg, SimpleNamespace(matmul_params=0), 12.0, 6, [])  # type: ignore[arg-type]
    search.best_lr("adamw", [1e-3, 2e-3, 4e-3], "", extend=False)
    search.best_lr("muon", [1e-2, 2e-2, 4e-2], "", extend=False)  # the allowance is long gone
    assert given == [given[0]] * 6 and given[0] == 200 * per_step
    tiny = LrSearch(ctx, cfg, SimpleNamespace(matmul_params=0), 0.01, 6, [])  # type: ignore[arg-type]
    given.clear()
    tiny.best_lr("adamw", [1e-3], "", extend=False)
    assert given == [MIN_STEPS * per_step]
