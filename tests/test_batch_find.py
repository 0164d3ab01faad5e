"""Gradient noise scale, memory fit, accumulation and the online meter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from steplab.cli.main import main
from steplab.config import RunConfig
from steplab.errors import SteplabError
from steplab.loop.fit import train
from steplab.loop.noise_scale import b_simple, measure_noise_scale, micro_batch_norms, noise_terms
from steplab.loop.session import build
from steplab.rundir import read_metrics
from steplab.tools.batch_find import accumulation, fit_memory, largest_fitting, saved_activation_bytes


def test_noise_terms_invert_the_expected_norms_exactly() -> None:
    g2, trace = 2.5, 40.0
    expected = lambda b: g2 + trace / b  # noqa: E731 - E|G_b|^2
    est_g2, est_trace = noise_terms(expected(8), expected(32), 8, 32)
    assert est_g2 == pytest.approx(g2) and est_trace == pytest.approx(trace)
    with pytest.raises(ValueError):
        noise_terms(1.0, 1.0, 8, 8)


def simulated_rounds(rng: np.random.Generator, rounds: int, *, b: int = 4, k: int = 4) -> tuple[list, list]:
    """Per-example gradients G + noise with |G|² = 1 and tr(Σ) = 50, reduced to micro-batch
    means of b examples, k per round: what the measurement sees on a model."""
    d = 200
    G = rng.normal(size=d)
    G /= np.linalg.norm(G)
    sigma = math.sqrt(50.0 / d)
    g2s, traces = [], []
    for _ in range(rounds):
        micro = G + rng.normal(0, sigma, size=(k, b, d)).mean(axis=1)  # (k, d)
        small = float((micro**2).sum(axis=1).mean())
        big = float((micro.mean(axis=0) ** 2).sum())
        g2, tr = noise_terms(small, big, b, b * k)
        g2s.append(g2)
        traces.append(tr)
    return g2s, traces


def test_b_simple_recovers_a_known_noise_scale() -> None:
    ns = b_simple(*simulated_rounds(np.random.default_rng(0), 400))
    assert ns.b_simple == pytest.approx(50.0, rel=0.1) and ns.high - ns.low < 10


def test_b_simple_error_bar_covers_the_truth_about_68_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(60):
        ns = b_simple(*simulated_rounds(rng, 20), boot=300, seed=rep)
        hits += ns.low <= 50.0 <= ns.high
    assert 0.45 <= hits / 60 <= 0.9, hits


def test_b_simple_of_unresolved_gradient_is_infinite() -> None:
    assert math.isinf(b_simple([-1.0, 0.5], [10.0, 10.0]).b_simple)


@pytest.mark.parametrize(
    ("global_batch", "max_micro", "expected"),
    [(64, 16, (16, 4)), (60, 16, (15, 4)), (7, 3, (1, 7)), (8, 100, (8, 1)), (12, 5, (4, 3))],
)
def test_accumulation_keeps_the_effective_batch(global_batch: int, max_micro: int, expected: tuple) -> None:
    micro, accum = accumulation(global_batch, max_micro)
    assert (micro, accum) == expected
    assert micro * accum == global_batch and micro <= max_micro


def test_largest_fitting_bisects_to_the_limit() -> None:
    calls: list[int] = []

    def fits(n: int) -> bool:
        calls.append(n)
        return n <= 37

    assert largest_fitting(fits) == 37 and len(calls) < 15
    assert largest_fitting(lambda n: False) == 0
    assert largest_fitting(lambda n: True, cap=100) == 100


def test_measuring_leaves_weights_and_rng_alone(tiny_cfg: RunConfig) -> None:
    s = build(tiny_cfg)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    rng = torch.get_rng_state()
    ns = measure_noise_scale(s, rounds=3, micro_batches=3)
    assert all(torch.equal(before[k], v) for k, v in s.model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in s.model.parameters())
    assert ns.g2 > 0 and ns.trace > 0 and 0 < ns.b_simple < math.inf and ns.rounds == 3
    xs = [s.sampler.batch_at(i) for i in range(4)]
    small, big = micro_batch_norms(s.model, xs)
    assert small > big > 0  # a mean of 4 noisy gradients is shorter than each of them


def test_cpu_memory_estimate_is_measured_from_the_model(tiny_cfg: RunConfig) -> None:
    s = build(tiny_cfg)
    x, y = s.sampler.batch_at(0)
    one, four = saved_activation_bytes(s.model, x[:1], y[:1]), saved_activation_bytes(s.model, x[:4], y[:4])
    assert four == pytest.approx(4 * one, rel=0.05)  # activations grow with the batch
    m = tiny_cfg.model
    assert (
        one > 4 * m.block_size * m.n_embd * m.n_layer * 4
    )  # at least a few float32 vectors per token and layer
    fit = fit_memory(build(tiny_cfg), fraction=0.5)
    assert fit.method == "estimate" and fit.max_micro_batch >= 1
    d = fit.detail
    assert fit.max_micro_batch == min(
        4096, int((0.5 * d["available_bytes"] - d["state_bytes"]) // d["bytes_per_sequence"])
    )


def test_online_meter_logs_noise_scale_and_leaves_training_unchanged(
    tmp_path: Path, tiny_cfg: RunConfig
) -> None:
    tiny_cfg.train.max_steps, tiny_cfg.train.log_every, tiny_cfg.eval.every = 20, 5, 0
    tiny_cfg.model.dropout = 0.1  # the meter's forward passes must not consume the training RNG
    plain = train(tiny_cfg, tmp_path / "plain")
    tiny_cfg.train.noise_scale_every = 10
    metered = train(tiny_cfg, tmp_path / "metered")
    a = [r["loss"] for r in read_metrics(tmp_path / "plain" / "metrics.jsonl") if "loss" in r]
    recs = [r for r in read_metrics(tmp_path / "metered" / "metrics.jsonl") if "loss" in r]
    assert [r["loss"] for r in recs] == a and metered.final["val_loss"] == plain.final["val_loss"]
    logged = [r for r in recs if "noise_scale" in r]
    assert [r["step"] for r in logged] == [10, 20]
    assert all(r["noise_scale"] > 0 and r["grad_trace_est"] > 0 for r in logged)


def test_batch_find_command(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    out = tmp_path / "bf.json"
    argv = ["batch-find", "--preset", "tiny", "--warmup-steps", "5", "--rounds", "3", "--global-batch", "24"]
    assert main([*argv, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gradient noise scale B_simple =" in text and "--train.grad-accum" in text
    res = json.loads(out.read_text())
    assert res["micro_batch"] * res["grad_accum"] == 24 and res["trained_steps"] == 5
    run = tmp_path / "run"
    assert (
        main(["train", "--preset", "tiny", "--train.max-steps", "5", "--run-dir", str(run), "--quiet"]) == 0
    )
    assert (
        main(["batch-find", "--preset", "default", "--run", str(run), "--rounds", "2", "--out", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert res["trained_steps"] == 0 and res["block_size"] == 32  # the run's model, not the preset's
    assert main(["batch-find", "--preset", "tiny", "--micro-batches", "1", "--warmup-steps", "0"]) == 2
    assert "--micro-batches must be >= 2" in capsys.readouterr().err


def test_accumulation_rejects_nonsense() -> None:
    with pytest.raises(SteplabError):
        accumulation(0, 4)
