"""The LR range test: the ramp, the suggestion rules, every optimizer, `--optim.lr auto`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from steplab.cli.main import main
from steplab.config import RunConfig, load_toml
from steplab.errors import SteplabError
from steplab.optim import OPTIMIZERS
from steplab.tools.lr_find import centered_smooth, exp_lr, lr_find, resolve_auto_lr, suggest, write_result


def test_exp_lr_spans_the_range_geometrically() -> None:
    lrs = [exp_lr(i, 9, 1e-6, 1e2) for i in range(9)]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1e2)
    ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
    assert np.allclose(ratios, 10.0)  # 8 decades in 8 steps


def test_centered_smooth_keeps_a_line_in_place() -> None:
    y = np.linspace(5.0, 1.0, 50)
    sm = centered_smooth(y, 3.0)
    assert np.allclose(sm[10:-10], y[10:-10])  # no lag, unlike a running average


def synthetic_curve(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """A loss that falls along a sigmoid centred at lr 1e-3 and blows up past 3e-2."""
    lrs = np.logspace(-7, 1, n)
    x = np.log10(lrs)
    loss = 4.0 - 2.0 / (1 + np.exp(-(x + 3) * 3)) + 50 * np.clip(x + 1.5, 0, None) ** 2
    return lrs, loss


def test_suggestions_on_a_known_curve() -> None:
    lrs, loss = synthetic_curve()
    rng = np.random.default_rng(0)
    noisy = loss + rng.normal(0, 0.02, size=loss.shape)
    s = suggest(lrs, noisy, rule="steepest")
    assert 10**-3.3 < s.steepest < 10**-2.7  # the sigmoid's centre
    exact_min = lrs[np.argmin(loss)]
    assert exact_min / 2 < s.minimum < exact_min * 2
    assert s.min10 == pytest.approx(s.minimum / 10) and s.lr == s.steepest
    assert suggest(lrs, noisy, rule="min10").lr == s.min10 and suggest(lrs, noisy).lr == s.steepest


def test_steepest_ignores_dips_on_the_plateau() -> None:
    """A language model's curve: a slow fall, a plateau with a dip steeper than the fall, then
    the blow-up. The minimum lands in the dip; the steepest point stays in the main fall."""
    lrs = np.logspace(-7, 1, 100)
    x = np.log10(lrs)
    loss = 4.2 - 0.9 / (1 + np.exp(-(x + 3)))  # the fall, centred at 1e-3
    loss -= 0.09 * np.exp(-(((x + 0.6) / 0.2) ** 2))  # a dip on the plateau at 0.25
    loss += 30 * np.clip(x + 0.2, 0, None) ** 2  # the blow-up past 0.6
    sm = centered_smooth(loss, 2.0)
    slope = np.gradient(sm, x)
    assert lrs[int(np.argmin(slope[:-20]))] > 0.1  # unrestricted, the dip would be steepest
    s = suggest(lrs, loss)
    assert 0.1 < s.minimum < 0.5  # the minimum is the dip ...
    assert 3e-4 < s.steepest < 3e-3 and s.lr == s.steepest  # ... the suggestion is not


def test_a_curve_that_never_falls_is_an_error() -> None:
    lrs = np.logspace(-7, -5, 60)
    loss = 4.2 + np.random.default_rng(0).normal(0, 0.01, 60)
    with pytest.raises(SteplabError, match="did not fall"):
        suggest(lrs, loss)
    with pytest.raises(SteplabError, match="--rule"):
        suggest(lrs, loss, rule="valley")


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_range_test_runs_for_every_optimizer(name: str, tiny_cfg: RunConfig) -> None:
    tiny_cfg.optim.name = name
    lr_before = tiny_cfg.optim.lr
    res = lr_find(tiny_cfg, steps=30, lr_min=1e-6, lr_max=10.0)
    assert tiny_cfg.optim.lr == lr_before  # the caller's config is untouched
    assert len(res.lrs) == len(res.losses) <= 30
    assert all(b > a for a, b in zip(res.lrs, res.lrs[1:], strict=False))
    assert min(res.smoothed) < res.smoothed[0] - 0.1  # the model learned something along the ramp
    assert 1e-6 < res.suggestion.lr < 10.0 and math.isfinite(res.suggestion.steepest)
    if res.stopped == "diverged":
        assert res.diverged_at is not None and res.diverged_at <= res.lrs[-1]  # may be the very last step


def test_adamw_range_test_stops_early_on_divergence(tiny_cfg: RunConfig, tmp_path: Path) -> None:
    res = lr_find(tiny_cfg, steps=40)
    assert res.stopped in ("diverged", "nan") and len(res.lrs) < 40
    js, png = write_result(res, tmp_path)
    data = json.loads(js.read_text())
    assert data["suggestion"]["lr"] == res.suggestion.lr and data["suggestion"]["rule"] == "steepest"
    assert png.stat().st_size > 10_000


def test_optim_lr_auto_resolves_before_training(tiny_cfg: RunConfig, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    tiny_cfg.optim.lr = "auto"
    lr = resolve_auto_lr(tiny_cfg, steps=30)
    assert tiny_cfg.optim.lr == lr and isinstance(lr, float) and 1e-7 < lr < 10
    assert "lr-find: --optim.lr auto ->" in capsys.readouterr().out
    run = tmp_path / "run"
    argv = [
        "train",
        "--preset",
        "tiny",
        "--optim.lr",
        "auto",
        "--train.max-steps",
        "3",
        "--run-dir",
        str(run),
    ]
    assert main([*argv, "--quiet", "--train.tensorboard", "false"]) == 0
    saved = load_toml(run / "config.toml")
    assert isinstance(saved.optim.lr, float) and saved.optim.lr > 0


def test_lr_find_command_writes_json_and_plot(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "lrf"
    assert main(["lr-find", "--preset", "tiny", "--steps", "30", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "suggested lr" in text and "steepest rule" in text
    assert (out / "lr_find.png").exists() and json.loads((out / "lr_find.json").read_text())["steps"] == 30
    assert main(["lr-find", "--preset", "tiny", "--steps", "30", "--lr-max", "1e-6", "--out", str(out)]) == 2
    assert "did not fall" in capsys.readouterr().err
