"""The loop's components: the progress view, config checks from Python, warnings, summary.json."""

from __future__ import annotations

import io
import json
import re
import sys
import warnings
from pathlib import Path

import pytest

from steplab import progress as progress_mod
from steplab.config import RunConfig
from steplab.errors import ConfigError
from steplab.loop.fit import fit, train
from steplab.loop.session import build
from steplab.optim import state_bytes
from steplab.progress import ProgressView
from steplab.rundir import read_metrics


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal: rich draws its live bar into it."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_without_a_terminal(tiny_cfg: RunConfig, capsys: pytest.CaptureFixture[str]) -> None:
    train(tiny_cfg, None, progress=True)
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\r" not in err  # no control codes in logs and pipes
    lines = err.splitlines()
    assert lines[0].startswith("steplab: 0.03M params, adamw lr 0.001, 256 tokens/step, cpu")
    steps = [line for line in lines if line.startswith("step ")]
    assert [line.split(":")[0] for line in steps] == [f"step {k}" for k in (10, 20, 30, 40, 50)]
    assert re.fullmatch(
        r"step 10: loss \d\.\d{4}  lr \S+  grad \d+\.\d{3}  [\d,]+ tok/s  train \d+:\d\d", steps[0]
    )
    assert [line.split(":")[0] for line in lines if line.startswith("eval")] == [
        "eval step 25",
        "eval step 50",
    ]


def bar_output(cfg: RunConfig, monkeypatch: pytest.MonkeyPatch) -> str:
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    monkeypatch.setenv("TERM", "xterm-256color")
    train(cfg, None, progress=True)
    return tty.getvalue()


@pytest.mark.parametrize("budget", ["steps", "seconds"])
def test_the_bar_ends_at_100_percent_and_keeps_the_loss_lines(
    tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch, budget: str
) -> None:
    if budget == "seconds":  # the budget ends between log steps: the bar used to freeze at the last log
        tiny_cfg.train.max_steps, tiny_cfg.train.max_seconds, tiny_cfg.train.log_every = None, 1.0, 1000
    out = bar_output(tiny_cfg, monkeypatch)
    assert "\x1b" in out  # drawn live
    percents = re.findall(r"(\d+\.\d)%", out)
    assert percents and percents[-1] == "100.0", percents[-5:]
    if budget == "steps":  # every log line stays above the bar (in the terminal's scrollback)
        assert all(f"step {k}: loss" in out for k in (10, 20, 30, 40, 50))


def test_the_bar_moves_between_log_steps_throttled(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: clock[0])
    view = ProgressView(1000, "steps", stream=FakeTTY())
    forwarded: list[float] = []
    real = view.bar.update
    monkeypatch.setattr(
        view.bar, "update", lambda task, **kw: forwarded.append(kw["completed"]) or real(task, **kw)
    )
    for step in range(1, 1001):  # 1000 steps in one second of the fake clock
        clock[0] = step / 1000
        view.update(step)
    view.update(1000, force=True)
    view.close()
    assert 9 <= len(forwarded) <= 12  # 10 a second, not 1000
    assert forwarded[-1] == 1000 and view.bar.tasks[0].completed == 1000
    view2 = ProgressView(10, "steps", stream=FakeTTY())
    view2.update(3, "loss 1.0")
    view2.update(4, "loss 0.9")  # new text always goes through
    assert view2.bar.tasks[0].fields["info"] == "loss 0.9" and view2.bar.tasks[0].completed == 4
    view2.close()


def test_python_api_validates_like_the_cli(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    tiny_cfg.optim.lr = "abc"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"^--optim.lr must be float or auto \(got 'abc'\)$"):
        train(tiny_cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    tiny_cfg.optim.lr = 1e-3
    tiny_cfg.train.batch_size = "8"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"--train.batch-size must be int \(got '8'\)"):
        train(tiny_cfg, None)
    tiny_cfg.train.batch_size, tiny_cfg.train.max_steps, tiny_cfg.schedule.warmup_steps = 8, 2, 0
    tiny_cfg.optim.weight_decay = 0  # an int where a float is expected is fine
    tiny_cfg.train.log_every = 1.0  # type: ignore[assignment]  # an integral float is the int
    assert train(tiny_cfg, None).status == "finished" and tiny_cfg.train.log_every == 1
    tiny_cfg.train.log_every = 1.5  # type: ignore[assignment]
    with pytest.raises(ConfigError, match=r"--train.log-every must be int \(got 1.5\)"):
        train(tiny_cfg, None)


def test_warmup_longer_than_the_run_warns_once(tiny_cfg: RunConfig) -> None:
    tiny_cfg.schedule.warmup_steps, tiny_cfg.train.max_steps = 50, 40
    with pytest.warns(
        UserWarning, match=r"--schedule.warmup-steps 50 is longer than the run \(40 steps\)"
    ) as w:
        train(tiny_cfg, None)
    assert len([x for x in w if "warmup" in str(x.message)]) == 1
    tiny_cfg.train.max_steps, tiny_cfg.train.max_tokens = None, 8 * 32 * 30  # 30 steps of tokens
    with pytest.warns(UserWarning, match=r"longer than the run \(30 steps\)"):
        train(tiny_cfg, None)
    tiny_cfg.schedule.warmup_steps = 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all for a warm-up that fits
        train(tiny_cfg, None)


def test_summary_carries_memory_and_optimizer_state(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    s = build(tiny_cfg)
    fit(s, run_dir=tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    logged = [r["rss_mb"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "rss_mb" in r]
    assert summary["rss_mb"] >= max(logged) > 10  # the largest sampled, final sample included
    assert summary["optimizer_state_mb"] == round(state_bytes(s.optimizer) / 2**20, 3) > 0
    assert "peak_mem_mb" not in summary  # a CUDA figure


def test_extending_a_finished_run_warns_about_the_stretched_schedule(
    tmp_path: Path, tiny_cfg: RunConfig
) -> None:
    """wsd to zero over 40 steps, then extended to 60: the rate jumps back up; the warning says by how much."""
    tiny_cfg.schedule.name, tiny_cfg.schedule.min_lr_ratio, tiny_cfg.schedule.decay_fraction = "wsd", 0.0, 0.5
    tiny_cfg.train.max_steps, tiny_cfg.eval.every = 40, 0
    run = tmp_path / "run"
    train(tiny_cfg, run)
    tiny_cfg.train.max_steps = 60
    # at step 40 of 60 the cool-down (the last 30 steps) is a third done: 2/3 of the peak 1e-3
    with pytest.warns(
        UserWarning, match=r"jumps from 0 \(where the run's own schedule had brought it\) to 0.000667"
    ):
        result = train(tiny_cfg, run, resume=True)
    assert result.status == "finished" and result.state.step == 60
    lrs = [(r["step"], r["lr"]) for r in read_metrics(run / "metrics.jsonl") if "lr" in r]
    assert [s for s, _ in lrs] == [10, 20, 30, 40, 50, 60]
    assert lrs[3][1] < 1e-4 < lrs[4][1]  # back up after the end of the first plan

    # a cosine to 10% extended by 10%: from 1e-4 to 1.18e-4, no warning
    tiny_cfg.schedule.name, tiny_cfg.schedule.min_lr_ratio, tiny_cfg.train.max_steps = "cosine", 0.1, 40
    train(tiny_cfg, tmp_path / "cosine")
    tiny_cfg.train.max_steps = 44
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert train(tiny_cfg, tmp_path / "cosine", resume=True).state.step == 44
