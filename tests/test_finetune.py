"""Freezing by name pattern and the LoRA merge, as pure pieces (the runs are in test_pretrained.py)."""

from __future__ import annotations

import pytest
import torch

from steplab.config import ModelConfig, OptimConfig
from steplab.errors import ConfigError
from steplab.finetune import freeze, merge_lora
from steplab.model import GPT
from steplab.optim import build_optimizer, param_groups


def tiny(**kw: object) -> GPT:
    return GPT(ModelConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=40, **kw))  # type: ignore[arg-type]


def test_patterns_cover_modules_and_globs() -> None:
    model = tiny()
    frozen = freeze(model, "wte, blocks.0")
    assert "wte.weight" in frozen and "blocks.0.attn.qkv.weight" in frozen
    assert not any(n.startswith("blocks.1") for n in frozen)
    assert not model.lm_head.weight.requires_grad  # tied to wte: the same tensor
    assert freeze(tiny(), "blocks.*.mlp.fc.bias") == ["blocks.0.mlp.fc.bias", "blocks.1.mlp.fc.bias"]
    assert freeze(tiny(), None) == freeze(tiny(), " , ") == []


def test_lm_head_names_a_tied_weight_too() -> None:
    model = tiny()
    assert freeze(model, "lm_head") == ["wte.weight"]


@pytest.mark.parametrize(
    ("spec", "message"), [("h.0.*", "matches no parameter"), ("*", "freezes every parameter")]
)
def test_bad_patterns(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        freeze(tiny(), spec)


@pytest.mark.parametrize("name", ["adamw", "muon", "sgd"])
def test_frozen_parameters_are_in_no_optimizer_group(name: str) -> None:
    model = tiny(tie_embeddings=False)
    freeze(model, "wte,blocks.0,norm_f")
    cfg = OptimConfig(name=name)
    groups = param_groups(model, cfg)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters() if p.requires_grad}
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    assert {id(p) for g in opt.param_groups for p in g["params"]} == grouped


def test_merge_lora_is_the_low_rank_update() -> None:
    g = torch.Generator().manual_seed(0)
    w0, a, b = torch.randn(6, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(6, 2, generator=g)
    merged = merge_lora(
        {
            "m.base_layer.weight": w0,
            "m.lora_A.default.weight": a,
            "m.lora_B.default.weight": b,
            "n.weight": a,
        },
        0.5,
    )
    assert set(merged) == {"m.weight", "n.weight"}
    torch.testing.assert_close(merged["m.weight"], w0 + 0.5 * b @ a)
    # The base may come under its plain name (a checkpoint completed from --init-from).
    again = merge_lora({"m.weight": w0, "m.lora_A.default.weight": a, "m.lora_B.default.weight": b}, 0.5)
    torch.testing.assert_close(again["m.weight"], merged["m.weight"])
