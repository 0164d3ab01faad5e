"""Sizes before allocation: exact integers from flags and files, and the memory estimate."""

from __future__ import annotations

import itertools

import pytest
import torch

from steplab.config import ModelConfig, RunConfig, coerce
from steplab.config.values import INT_LIMIT, exact_int
from steplab.errors import ConfigError
from steplab.model import GPT, count_params
from steplab.optim import build_optimizer, state_bytes
from steplab.sizing import check_fits, estimate_bytes, param_count


def test_integers_are_parsed_exactly_and_bounded() -> None:
    assert exact_int("99999999999999999999999") == 99999999999999999999999  # not 99999999999999991611392
    assert exact_int("1e3") == 1000 and exact_int(12.0) == 12 and exact_int("1_000") == 1000
    assert exact_int("1e30") is None and exact_int("2.5") is None and exact_int(True) is None
    assert coerce(int, str(INT_LIMIT), "--x") == INT_LIMIT
    with pytest.raises(ConfigError, match=r"--x is too large \(got '9223372036854775808'"):
        coerce(int, str(INT_LIMIT + 1), "--x")


@pytest.mark.parametrize(
    ("pos", "norm", "mlp", "bias", "tie", "qk", "kv"),
    list(itertools.product(["learned", "rope"], ["layernorm", "rmsnorm"], ["gelu", "swiglu", "relu2"], [True, False], [True, False], [True, False], [None, 2]))[::7],
)  # fmt: skip
def test_param_count_is_exact_without_building(pos: str, norm: str, mlp: str, bias: bool, tie: bool, qk: bool, kv: int | None) -> None:  # fmt: skip
    cfg = ModelConfig(
        n_layer=2, n_head=4, n_kv_head=kv, n_embd=32, block_size=16, vocab_size=50,
        pos=pos, norm=norm, mlp=mlp, bias=bias, tie_embeddings=tie, qk_norm=qk,
    )  # fmt: skip
    assert param_count(cfg) == count_params(GPT(cfg))


@pytest.mark.parametrize("optim", ["adamw", "sgd", "muon", "lion"])
def test_the_estimate_covers_weights_gradients_and_state(tiny_cfg: RunConfig, optim: str) -> None:
    tiny_cfg.model.vocab_size, tiny_cfg.optim.name = 65, optim
    model = GPT(tiny_cfg.model)
    opt = build_optimizer(model, tiny_cfg.optim, torch.device("cpu"), tiny_cfg.model)
    x = torch.randint(65, (tiny_cfg.train.batch_size, tiny_cfg.model.block_size))
    model(x, x)[1].backward()
    opt.step()
    held = sum(p.numel() * p.element_size() for p in model.parameters())
    est = estimate_bytes(tiny_cfg)
    assert est["weights"] == held and est["gradients"] == held
    # the state: within Adam's per-tensor step counters (a few bytes each) of the estimate, never far above
    assert state_bytes(opt) <= 1.01 * est["optimizer"] <= 2.02 * max(state_bytes(opt), held)


def test_a_model_that_cannot_fit_is_refused_with_the_numbers(tiny_cfg: RunConfig) -> None:
    tiny_cfg.model.vocab_size, tiny_cfg.model.n_layer = 65, 10**12
    with pytest.raises(
        ConfigError, match=r"this model cannot fit: .* parameters need about .* available on cpu"
    ):
        check_fits(tiny_cfg, torch.device("cpu"))
    tiny_cfg.model.n_layer = 2
    assert check_fits(tiny_cfg, torch.device("cpu"))["total"] > 0
