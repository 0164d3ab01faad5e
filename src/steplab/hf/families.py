"""Which transformers class a steplab model is, and which steplab model a transformers config is.

Each `Family` is one transformers class whose forward pass steplab's `GPT` computes exactly
for some settings of `ModelConfig` (checked against transformers 5.24's modeling code):

- ``LlamaForCausalLM``: RoPE, RMSNorm, SwiGLU; biases on all linear layers or none.
- ``Qwen3ForCausalLM``: Llama plus a per-head RMSNorm (with gains) on q and k before RoPE,
  which is steplab's ``qk_norm``; no MLP biases, so ``bias=false`` only.
- ``ArceeForCausalLM``: Llama with a non-gated up/act/down MLP (``hidden_act`` relu2, gelu
  or tanh-gelu), steplab's ``mlp=relu2|gelu|gelu_tanh``: the ``default`` preset.
- ``ApertusForCausalLM``: Arcee's MLP (no biases) plus Qwen3's q/k norm: ``speedrun_cpu``.
- ``GPT2LMHeadModel``: learned positions, LayerNorm, a non-gated MLP, biases (a model
  without them is written with zero biases: the same function).

Other near neighbours do not match: NanoChat's q/k and layer norms have no gains and it
rotates RoPE the other way; Nemotron's LayerNorm adds 1 to its gain and rotates part of
each head; OLMo-2 normalises q and k over all heads at once.

`family_for` picks the class for an export (or names the setting that has none);
`model_fields` reads a transformers config back into `ModelConfig` fields for an import
(or names the setting steplab cannot represent). `steplab.hf.weights` maps the tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from steplab.config import ModelConfig
from steplab.errors import SteplabError


class ExportError(SteplabError):
    """A model or tokenizer that cannot be written faithfully in the requested format."""


class PretrainedError(SteplabError):
    """A pretrained directory that steplab cannot load exactly (`--init-from`)."""


HF_EXTRA = "needs the hf extra: pip install 'steplab[hf]' (transformers)"

# steplab's non-gated MLP activations <-> transformers' `hidden_act` (ACT2FN names).
ACTIVATIONS: dict[str, str] = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu2": "relu2"}
GPT2_ACTIVATIONS: dict[str, str] = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu2": "relu2"}
FROM_HF_ACTIVATION: dict[str, str] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",  # GPT-2's own tanh approximation (the same function as torch's)
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu2": "relu2",
}


@dataclass(frozen=True)
class Family:
    name: str  # the config.json model_type
    cls: str  # the transformers class
    pos: Literal["learned", "rope"]
    norm: Literal["layernorm", "rmsnorm"]
    gated: bool  # SwiGLU (gate, up, down) rather than up, activation, down
    qk_norm: bool
    biases: Literal["follow", "none", "gpt2"]  # follow --model.bias | the class has none | GPT-2's, always
    norm_names: tuple[str, str] = ("input_layernorm", "post_attention_layernorm")


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("llama", "LlamaForCausalLM", "rope", "rmsnorm", gated=True, qk_norm=False, biases="follow"),
        Family("qwen3", "Qwen3ForCausalLM", "rope", "rmsnorm", gated=True, qk_norm=True, biases="none"),
        Family("arcee", "ArceeForCausalLM", "rope", "rmsnorm", gated=False, qk_norm=False, biases="follow"),
        Family(
            "apertus",
            "ApertusForCausalLM",
            "rope",
            "rmsnorm",
            gated=False,
            qk_norm=True,
            biases="none",
            norm_names=("attention_layernorm", "feedforward_layernorm"),
        ),
        Family("gpt2", "GPT2LMHeadModel", "learned", "layernorm", gated=False, qk_norm=False, biases="gpt2"),
    )
}


def logit_scale(cfg: ModelConfig) -> float:
    return cfg.mup_base_width / cfg.n_embd if cfg.parametrization == "mup" else 1.0


# --- export: steplab -> transformers ---------------------------------------------------------


SPEEDRUN_SWITCHES = ("logit_softcap", "unet_skips", "value_embeds")  # model.py's modded-nanogpt levers


def family_for(cfg: ModelConfig) -> Family:
    """The transformers class that computes exactly what `cfg`'s model does; `ExportError` naming
    the blocking setting (and the presets that do export) when there is none."""
    switches = [
        f"--model.{f.replace('_', '-')} {getattr(cfg, f)}" for f in SPEEDRUN_SWITCHES if getattr(cfg, f)
    ]
    if switches:  # no transformers decoder computes these
        raise ExportError(f"{', '.join(switches)}: no transformers equivalent{_exportable()}")
    if cfg.parametrization == "mup" and cfg.tie_embeddings and logit_scale(cfg) != 1.0:
        raise ExportError(
            "--model.parametrization mup with --model.tie-embeddings true: the muP logit scale "
            f"(1/{1 / logit_scale(cfg):g}) cannot be folded into a head shared with the input embedding"
        )
    got = _shape_of(cfg)
    for fam in FAMILIES.values():
        if _shape_of_family(fam, cfg.mlp) == got:
            if fam.biases == "none" and cfg.bias:
                raise ExportError(
                    f"--model.bias true: {fam.cls} (the transformers class for qk-norm) has no MLP biases; "
                    f"train with --model.bias false{_exportable()}"
                )
            if fam.biases == "gpt2" and cfg.kv_heads != cfg.n_head:
                raise ExportError(
                    f"--model.n-kv-head {cfg.kv_heads} (grouped-query attention) has no GPT-2 equivalent; "
                    f"GQA exports only with rope and rmsnorm{_exportable()}"
                )
            return fam
    # Name the settings that keep the model from the class it is closest to.
    nearest = max(
        FAMILIES.values(),
        key=lambda f: sum(a == b for a, b in zip(_shape_of_family(f, cfg.mlp), got, strict=True)),
    )
    want = _shape_of_family(nearest, cfg.mlp)
    names = ("pos", "norm", "mlp", "qk-norm")
    any_act = " or ".join(ACTIVATIONS)
    wrong = [
        f"--model.{n} {_show(g)} (needs {any_act if n == 'mlp' and not nearest.gated else _show(w)})"
        for n, g, w in zip(names, got, want, strict=True)
        if g != w
    ]
    raise ExportError(f"no transformers equivalent: for {nearest.cls}, {', '.join(wrong)}{_exportable()}")


def _shape_of(cfg: ModelConfig) -> tuple[Any, ...]:
    return (cfg.pos, cfg.norm, cfg.mlp, cfg.qk_norm)


def _shape_of_family(fam: Family, mlp: str) -> tuple[Any, ...]:
    """The family's (pos, norm, mlp, qk_norm); a non-gated family takes any of steplab's activations."""
    want_mlp = "swiglu" if fam.gated else (mlp if mlp in ACTIVATIONS else "relu2")
    return (fam.pos, fam.norm, want_mlp, fam.qk_norm)


def _show(v: Any) -> str:
    return str(v).lower() if isinstance(v, bool) else str(v)


def _exportable() -> str:
    from steplab.presets import PRESETS

    ok = []
    for name, make in PRESETS.items():
        try:
            family_for(make().model)
            ok.append(name)
        except ExportError:
            pass
    return f" (presets that export: {', '.join(ok)})"


def hf_config(cfg: ModelConfig, fam: Family) -> Any:
    """The transformers config of `cfg`'s model. No bos/eos/pad: steplab's own tokenizers have none."""
    import transformers

    common: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": cfg.tie_embeddings,
        "initializer_range": cfg.init_std,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
    }
    if fam.name == "gpt2":
        return transformers.AutoConfig.for_model(
            "gpt2",
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.mlp_hidden,
            activation_function=GPT2_ACTIVATIONS[cfg.mlp],
            layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            reorder_and_upcast_attn=False,
            **common,
        )
    kw: dict[str, Any] = {
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu" if fam.gated else ACTIVATIONS[cfg.mlp],
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "attention_bias": cfg.bias,
        "attention_dropout": cfg.dropout,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
    }
    if fam.biases == "follow":
        kw["mlp_bias"] = cfg.bias
    if fam.name != "apertus":
        kw["head_dim"] = cfg.head_dim
    if fam.name == "qwen3":
        kw["use_sliding_window"] = False
    return transformers.AutoConfig.for_model(fam.name, **kw, **common)


# --- import: transformers -> steplab ---------------------------------------------------------


def model_fields(hf: Any) -> tuple[Family, dict[str, Any], int]:
    """(family, the `ModelConfig` fields, the longest context) of a transformers config.

    Every setting that changes the function is checked; one steplab cannot compute exactly is
    a `PretrainedError` naming it. Training settings (dropout) are left to the run's config.
    """
    mt = getattr(hf, "model_type", None)
    fam = FAMILIES.get(str(mt))
    if fam is None:
        raise PretrainedError(
            f"model_type {mt!r} ({', '.join(getattr(hf, 'architectures', None) or ['?'])}) has no exact "
            f"steplab equivalent (supported: {', '.join(f.cls for f in FAMILIES.values())})"
        )
    return (fam, *(_gpt2_fields(hf) if fam.name == "gpt2" else _llama_fields(hf, fam)))


def _refuse(hf: Any, setting: str, why: str) -> PretrainedError:
    return PretrainedError(f"{hf.model_type} config {setting}: {why}")


def _llama_fields(hf: Any, fam: Family) -> tuple[dict[str, Any], int]:
    C, nh = int(hf.hidden_size), int(hf.num_attention_heads)
    head_dim = getattr(hf, "head_dim", None) or C // nh
    if C % nh or head_dim != C // nh:
        raise _refuse(
            hf, f"head_dim {head_dim}", f"steplab's heads are hidden_size/num_attention_heads ({C}/{nh})"
        )
    rope = dict(getattr(hf, "rope_parameters", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise _refuse(hf, f"rope_type {rope_type!r}", "steplab implements default RoPE only (no scaling)")
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise _refuse(hf, "partial_rotary_factor", "steplab rotates whole heads")
    theta = rope.get("rope_theta", getattr(hf, "rope_theta", None))
    act = str(hf.hidden_act)
    if fam.gated and act != "silu":
        raise _refuse(hf, f"hidden_act {act!r}", "steplab's gated MLP is SwiGLU (silu)")
    if not fam.gated and act not in FROM_HF_ACTIVATION:
        raise _refuse(hf, f"hidden_act {act!r}", f"steplab has {', '.join(FROM_HF_ACTIVATION)}")
    bias = bool(getattr(hf, "attention_bias", False))
    if fam.biases == "none" and bias:
        raise _refuse(
            hf, "attention_bias true", f"{fam.cls} has no MLP biases; steplab's biases are all or none"
        )
    if fam.biases == "follow" and bool(getattr(hf, "mlp_bias", False)) != bias:
        raise _refuse(hf, "attention_bias != mlp_bias", "steplab's biases are on every linear layer or none")
    if "sliding_attention" in (getattr(hf, "layer_types", None) or []) or getattr(
        hf, "use_sliding_window", False
    ):
        raise _refuse(hf, "sliding-window attention", "steplab attends to the whole context")
    if theta is None or not math.isfinite(float(theta)):
        raise _refuse(hf, "rope_theta", "missing")
    kv = int(getattr(hf, "num_key_value_heads", None) or nh)
    fields = {
        "n_layer": int(hf.num_hidden_layers),
        "n_head": nh,
        "n_kv_head": None if kv == nh else kv,
        "n_embd": C,
        "vocab_size": int(hf.vocab_size),
        "pos": "rope",
        "rope_theta": float(theta),
        "norm": "rmsnorm",
        "norm_eps": float(hf.rms_norm_eps),
        "mlp": "swiglu" if fam.gated else FROM_HF_ACTIVATION[act],
        "mlp_width": int(hf.intermediate_size),
        "qk_norm": fam.qk_norm,
        "tie_embeddings": bool(getattr(hf, "tie_word_embeddings", False)),
        "bias": bias,
        "parametrization": "sp",
    }
    return fields, int(hf.max_position_embeddings)


def _gpt2_fields(hf: Any) -> tuple[dict[str, Any], int]:
    act = str(hf.activation_function)
    if act not in FROM_HF_ACTIVATION:
        raise _refuse(hf, f"activation_function {act!r}", f"steplab has {', '.join(FROM_HF_ACTIVATION)}")
    if not getattr(hf, "scale_attn_weights", True):
        raise _refuse(hf, "scale_attn_weights false", "steplab scales scores by 1/sqrt(head size)")
    if getattr(hf, "scale_attn_by_inverse_layer_idx", False):
        raise _refuse(hf, "scale_attn_by_inverse_layer_idx true", "steplab scales every layer alike")
    if getattr(hf, "add_cross_attention", False):
        raise _refuse(hf, "add_cross_attention true", "steplab is a decoder only")
    C = int(hf.n_embd)
    fields = {
        "n_layer": int(hf.n_layer),
        "n_head": int(hf.n_head),
        "n_kv_head": None,
        "n_embd": C,
        "vocab_size": int(hf.vocab_size),
        "pos": "learned",
        "rope_theta": ModelConfig.rope_theta,  # unused without RoPE: the default, so configs compare equal
        "norm": "layernorm",
        "norm_eps": float(hf.layer_norm_epsilon),
        "mlp": FROM_HF_ACTIVATION[act],
        "mlp_width": int(getattr(hf, "n_inner", None) or 4 * C),
        "qk_norm": False,
        "tie_embeddings": bool(getattr(hf, "tie_word_embeddings", True)),
        "bias": True,
        "parametrization": "sp",
    }
    return fields, int(hf.n_positions)
