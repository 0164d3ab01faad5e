"""muP: the parametrization's rules, the coordinate check and width transfer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from steplab.cli.main import main
from steplab.config import RunConfig, dump_toml, load_toml
from steplab.errors import ConfigError
from steplab.model import GPT
from steplab.optim import mup_lr_mults, param_groups
from steplab.tools.mup import coord_check, group_lrs, scaled_config, slopes


def model_cfg(tiny_cfg: RunConfig, width: int, parametrization: str, base: int = 32) -> RunConfig:
    tiny_cfg.model.vocab_size = 40
    tiny_cfg.model.n_embd, tiny_cfg.model.mup_base_width = width, base
    tiny_cfg.model.parametrization = parametrization  # type: ignore[assignment]
    return tiny_cfg


def test_mup_at_the_base_width_is_the_standard_model(tiny_cfg: RunConfig) -> None:
    x = torch.randint(0, 40, (2, 16))
    out = {}
    for p in ("sp", "mup"):
        torch.manual_seed(0)
        out[p] = GPT(model_cfg(tiny_cfg, 32, p).model)(x)[0]
    assert torch.allclose(out["sp"], out["mup"], atol=1e-6)


def test_mup_attention_scale_and_output_multiplier(tiny_cfg: RunConfig) -> None:
    m = GPT(model_cfg(tiny_cfg, 128, "mup").model)  # 4x the base width, 2 heads of 64
    base_head = 32 / 2
    assert m.blocks[0].attn.scale == pytest.approx(math.sqrt(base_head) / 64)  # 1/hs, not 1/sqrt(hs)
    assert m.logit_scale == pytest.approx(0.25)
    hidden = m.blocks[0].mlp.fc.weight.std().item()
    assert hidden == pytest.approx(0.02 / 2, rel=0.1)  # std / sqrt(width multiplier)


def test_mup_learning_rate_rules() -> None:
    assert mup_lr_mults("adamw", 4.0) == {"matrix": 0.25, "embed": 1.0, "head": 1.0, "vector": 1.0}
    assert mup_lr_mults("sgd", 4.0) == {"matrix": 1.0, "embed": 4.0, "head": 4.0, "vector": 4.0}
    with pytest.warns(UserWarning, match="no learning-rate rule"):
        assert mup_lr_mults("mystery", 2.0)["matrix"] == 0.5


def test_param_groups_apply_the_rules_per_group(tiny_cfg: RunConfig) -> None:
    cfg = model_cfg(tiny_cfg, 64, "mup")
    cfg.model.tie_embeddings = False
    cfg.optim.head_lr_mult = 0.5
    model = GPT(cfg.model)
    groups = {g["name"]: g["lr_mult"] for g in param_groups(model, cfg.optim, cfg.model)}
    assert groups == {"matrix": 0.5, "embed": 1.0, "head": 0.5, "vector": 1.0}
    assert not model.lm_head.weight.any()  # the untied readout starts at zero
    cfg.optim.name = "sgd"
    groups = {g["name"]: g["lr_mult"] for g in param_groups(model, cfg.optim, cfg.model)}
    assert groups == {"matrix": 1.0, "embed": 2.0, "head": 1.0, "vector": 2.0}


def test_coord_check_is_flat_under_mup_and_grows_under_sp(tiny_cfg: RunConfig) -> None:
    cfg = model_cfg(tiny_cfg, 32, "sp")
    cfg.model.vocab_size = 0
    widths = [32, 64, 128]
    sp = slopes(coord_check(cfg, widths, parametrization="sp", steps=3, lr=1e-2))
    mup_check = coord_check(cfg, widths, parametrization="mup", steps=3, lr=1e-2)
    mup = slopes(mup_check)
    assert set(sp) == set(mup) and {"embedding", "block.1", "logits"} <= set(mup)
    assert max(abs(v) for v in mup.values()) < 0.35, mup
    hidden = [v for k, v in sp.items() if k != "embedding"]
    assert sum(hidden) / len(hidden) > 0.8, sp  # roughly doubling with every doubling of width
    assert len(mup_check.rms["logits"][0]) == 3  # one value per step


def test_transfer_moves_an_sp_config_to_a_wider_mup_model(
    tiny_cfg: RunConfig, tmp_path: Path, capsys
) -> None:  # noqa: ANN001
    tiny_cfg.optim.lr = 4e-3
    wide = scaled_config(tiny_cfg, 128)
    m = wide.model
    assert (m.parametrization, m.mup_base_width, m.n_embd, m.n_head) == (
        "mup",
        32,
        128,
        tiny_cfg.model.n_head,
    )
    assert wide.optim.lr == 4e-3  # muP carries the tuned rate: the groups scale it
    assert group_lrs(wide)["matrix"] == pytest.approx(1e-3) and group_lrs(wide)["embed"] == 4e-3
    again = scaled_config(wide, 256)  # already muP: the base stays
    assert again.model.mup_base_width == 32
    with pytest.raises(ConfigError, match="divisible by the head count"):
        scaled_config(tiny_cfg, 33)
    src = tmp_path / "best.toml"
    src.write_text(dump_toml(tiny_cfg))
    assert main(["transfer", "--from", str(src), "--width", "64"]) == 0
    out = load_toml(tmp_path / "best-w64.toml")
    assert out.model.n_embd == 64 and out.model.parametrization == "mup" and out.optim.lr == 4e-3
    assert "matrix  lr 0.004 -> 0.002" in capsys.readouterr().out


def test_coord_check_command_writes_the_plot(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    argv = ["coord-check", "--preset", "tiny", "--widths", "32,64", "--steps", "2", "--out", str(tmp_path)]
    assert main([*argv, "--model.mup-base-width", "32"]) == 0
    assert (tmp_path / "coord_check.png").stat().st_size > 10_000
    text = capsys.readouterr().out
    assert text.count("per doubling of width") == 2
    assert main(["coord-check", "--preset", "tiny", "--widths", "32,33"]) == 2
