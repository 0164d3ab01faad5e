"""Export a run's checkpoint for use outside steplab.

``--format hf`` writes a directory that ``transformers.AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained`` load without custom code:

- Llama-style models (rope, rmsnorm, swiglu) become ``LlamaForCausalLM``: steplab's fused
  ``qkv`` splits into ``q_proj``/``k_proj``/``v_proj``, the fused swiglu ``fc`` (gate, then
  up) into ``gate_proj``/``up_proj``. Both use the rotate-half RoPE layout, so no permutation.
- GPT-2-style models (learned positions, layernorm, gelu) become ``GPT2LMHeadModel``, whose
  ``Conv1D`` stores weights as (in, out): every matrix is transposed. steplab's GELU is the
  exact erf form, so the activation is ``gelu``, not GPT-2's tanh ``gelu_new``.
- char, byte and BPE tokenizers become one fast tokenizer (``tokenizer.json``) each.

Anything without a faithful equivalent is an `ExportError` that names the blocking setting.
Before the directory lands at ``--out``, it is reloaded with transformers and its logits
compared with steplab's; an unfaithful export is an error and writes nothing.

``--format safetensors`` writes the plain state dict, the model config as JSON and
steplab's own tokenizer: no transformers needed, `load_safetensors` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from steplab.config import ModelConfig
from steplab.data.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer, from_json
from steplab.errors import SteplabError
from steplab.model import GPT


class ExportError(SteplabError):
    """A model or tokenizer that cannot be written faithfully in the requested format."""


HF_EXTRA = "the hf export needs the hf extra: pip install 'steplab[hf]' (transformers)"


# --- which transformers class, or why none ------------------------------------------------


def hf_family(cfg: ModelConfig) -> str:
    """'llama' or 'gpt2' for a model transformers can run as is; `ExportError` naming the setting otherwise."""
    if cfg.qk_norm:
        raise ExportError(
            "--model.qk-norm true has no transformers equivalent in LlamaForCausalLM or GPT2LMHeadModel"
        )
    if cfg.parametrization == "mup" and cfg.tie_embeddings and logit_scale(cfg) != 1.0:
        raise ExportError(
            "--model.parametrization mup with --model.tie-embeddings true: the muP logit scale "
            f"(1/{1 / logit_scale(cfg):g}) cannot be folded into a head shared with the input embedding"
        )
    llama = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu"}
    gpt2 = {"pos": "learned", "norm": "layernorm", "mlp": "gelu"}
    got = {k: getattr(cfg, k) for k in llama}
    for family, want in (("llama", llama), ("gpt2", gpt2)):
        if got == want:
            if family == "gpt2" and cfg.kv_heads != cfg.n_head:
                raise ExportError(
                    f"--model.n-kv-head {cfg.kv_heads} (grouped-query attention) has no GPT-2 equivalent; "
                    "GQA exports only as a Llama-style model (rope, rmsnorm, swiglu)"
                )
            return family
    # Name the settings that keep the model from the family it is closest to.
    nearest = llama if sum(got[k] == v for k, v in llama.items()) >= 2 else gpt2
    name = "LlamaForCausalLM" if nearest is llama else "GPT2LMHeadModel"
    wrong = [f"--model.{k} {got[k]} (needs {v})" for k, v in nearest.items() if got[k] != v]
    raise ExportError(f"no transformers equivalent: for {name}, {', '.join(wrong)}")


def logit_scale(cfg: ModelConfig) -> float:
    return cfg.mup_base_width / cfg.n_embd if cfg.parametrization == "mup" else 1.0


def _fold_mup(cfg: ModelConfig, q: torch.Tensor) -> torch.Tensor:
    """transformers scales scores by 1/sqrt(hs); fold steplab's muP scale into q instead.

    RoPE is linear in q, so scaling before it is exact.
    """
    from steplab.model import attention_scale

    scale = attention_scale(cfg)
    return q if scale is None else q * (scale * math.sqrt(cfg.head_dim))


# --- weights -----------------------------------------------------------------------------


def llama_state(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """steplab names -> LlamaForCausalLM names (same (out, in) layout as nn.Linear)."""
    nh, nkv, hs = cfg.n_head, cfg.kv_heads, cfg.head_dim
    out = {"model.embed_tokens.weight": sd["wte.weight"], "model.norm.weight": sd["norm_f.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"] * logit_scale(cfg)
    for i in range(cfg.n_layer):
        s, d = f"blocks.{i}.", f"model.layers.{i}."
        out[d + "input_layernorm.weight"] = sd[s + "norm1.weight"]
        out[d + "post_attention_layernorm.weight"] = sd[s + "norm2.weight"]
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            q, k, v = sd[s + f"attn.qkv.{kind}"].split([nh * hs, nkv * hs, nkv * hs], dim=0)
            out[d + f"self_attn.q_proj.{kind}"] = _fold_mup(cfg, q)
            out[d + f"self_attn.k_proj.{kind}"] = k
            out[d + f"self_attn.v_proj.{kind}"] = v
            out[d + f"self_attn.o_proj.{kind}"] = sd[s + f"attn.proj.{kind}"]
            gate, up = sd[s + f"mlp.fc.{kind}"].chunk(2, dim=0)
            out[d + f"mlp.gate_proj.{kind}"] = gate
            out[d + f"mlp.up_proj.{kind}"] = up
            out[d + f"mlp.down_proj.{kind}"] = sd[s + f"mlp.proj.{kind}"]
    return out


def gpt2_state(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """steplab names -> GPT2LMHeadModel names; Conv1D matrices are (in, out), so transposed.

    A model trained without biases gets zero biases: the same function, in GPT-2's shape.
    """
    C = cfg.n_embd

    def bias(key: str, n: int) -> torch.Tensor:
        return sd[key] if cfg.bias else torch.zeros(n)

    out = {
        "transformer.wte.weight": sd["wte.weight"],
        "transformer.wpe.weight": sd["wpe.weight"],
        "transformer.ln_f.weight": sd["norm_f.weight"],
        "transformer.ln_f.bias": bias("norm_f.bias", C),
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"] * logit_scale(cfg)
    for i in range(cfg.n_layer):
        s, d = f"blocks.{i}.", f"transformer.h.{i}."
        for src, dst in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out[d + f"{dst}.weight"] = sd[s + f"{src}.weight"]
            out[d + f"{dst}.bias"] = bias(s + f"{src}.bias", C)
        w, b = sd[s + "attn.qkv.weight"].clone(), bias(s + "attn.qkv.bias", 3 * C).clone()
        w[:C], b[:C] = _fold_mup(cfg, w[:C]), _fold_mup(cfg, b[:C])
        out[d + "attn.c_attn.weight"], out[d + "attn.c_attn.bias"] = w.t(), b
        out[d + "attn.c_proj.weight"] = sd[s + "attn.proj.weight"].t()
        out[d + "attn.c_proj.bias"] = bias(s + "attn.proj.bias", C)
        out[d + "mlp.c_fc.weight"] = sd[s + "mlp.fc.weight"].t()
        out[d + "mlp.c_fc.bias"] = bias(s + "mlp.fc.bias", cfg.mlp_hidden)
        out[d + "mlp.c_proj.weight"] = sd[s + "mlp.proj.weight"].t()
        out[d + "mlp.c_proj.bias"] = bias(s + "mlp.proj.bias", C)
    return out


def hf_config(cfg: ModelConfig, family: str) -> Any:
    """The transformers config. No bos/eos/pad: steplab's tokenizers have no special tokens."""
    import transformers

    no_special: dict[str, Any] = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    if family == "llama":
        # transformers 5 reads RoPE settings from rope_parameters; 4.x from rope_theta.
        rope: dict[str, Any] = (
            {"rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}}
            if "rope_parameters" in getattr(transformers.LlamaConfig, "__dataclass_fields__", {})
            else {"rope_theta": cfg.rope_theta}
        )
        return transformers.LlamaConfig(
            vocab_size=cfg.vocab_size,
            hidden_size=cfg.n_embd,
            intermediate_size=cfg.mlp_hidden,
            num_hidden_layers=cfg.n_layer,
            num_attention_heads=cfg.n_head,
            num_key_value_heads=cfg.kv_heads,
            head_dim=cfg.head_dim,
            hidden_act="silu",
            max_position_embeddings=cfg.block_size,
            rms_norm_eps=cfg.norm_eps,
            tie_word_embeddings=cfg.tie_embeddings,
            attention_bias=cfg.bias,
            mlp_bias=cfg.bias,
            attention_dropout=cfg.dropout,
            initializer_range=cfg.init_std,
            **rope,
            **no_special,
        )
    return transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.block_size,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=cfg.mlp_hidden,
        activation_function="gelu",  # exact erf GELU, as torch's F.gelu
        layer_norm_epsilon=cfg.norm_eps,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        scale_attn_weights=True,
        scale_attn_by_inverse_layer_idx=False,
        reorder_and_upcast_attn=False,
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.init_std,
        **no_special,
    )


# --- tokenizers ----------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the symbols of a byte-level vocabulary."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_tokenizer(tok: Tokenizer) -> Any:
    """A `tokenizers.Tokenizer` that encodes and decodes exactly as `tok` does.

    byte: a byte-level BPE with the 256 byte symbols as id 0..255 and no merges.
    char: a BPE whose vocabulary is the alphabet, no merges and no pre-tokenizer, so every
    character is one token; characters outside the alphabet are dropped, where steplab raises.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    if isinstance(tok, BPETokenizer):
        return HFTokenizer.from_str(tok.tok.to_str())
    if isinstance(tok, ByteTokenizer):
        vocab = {s: b for b, s in bytes_to_unicode().items()}
        t = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        t.decoder = decoders.ByteLevel()
        return t
    if isinstance(tok, CharTokenizer):
        t = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[]))
        t.decoder = decoders.Fuse()
        return t
    raise ExportError(f"--tokenizer.kind {tok.kind}: no fast-tokenizer equivalent")


def check_tokenizer(tok: Tokenizer, fast: Any, sample: str) -> None:
    """Refuse to write a tokenizer that disagrees with steplab's on `sample`."""
    ours = tok.encode(sample)
    theirs = fast.encode(sample, add_special_tokens=False)
    if list(theirs) != ours:
        raise ExportError(f"the exported {tok.kind} tokenizer encodes differently from steplab's")
    if fast.decode(ours, skip_special_tokens=False, clean_up_tokenization_spaces=False) != tok.decode(ours):
        raise ExportError(f"the exported {tok.kind} tokenizer decodes differently from steplab's")


# --- the exports ---------------------------------------------------------------------------


@dataclasses.dataclass
class Exported:
    out: Path
    family: str  # llama | gpt2 | steplab
    max_abs_diff: float | None  # transformers' logits vs steplab's on a random batch


def build_model(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> GPT:
    from steplab.checkpoint import load_weights

    model = GPT(cfg)
    load_weights(model, weights, Path("<export>"))
    return model.eval()


def export_hf(
    model: GPT,
    tok: Tokenizer,
    out: Path,
    *,
    sample: str = "",
    provenance: dict[str, Any] | None = None,
    tolerance: float = 1e-3,
) -> Exported:
    """Write `model` and `tok` as a transformers directory, reloaded and checked before it lands.

    The reload's logits on a random batch must be within `tolerance` of steplab's.
    """
    cfg = model.cfg
    family = hf_family(cfg)
    try:
        import transformers
    except ImportError:
        raise ExportError(HF_EXTRA) from None
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer(tok), clean_up_tokenization_spaces=False
    )
    check_tokenizer(tok, fast, sample or _tokenizer_sample(tok))
    fast.model_max_length = cfg.block_size  # transformers warns past it (positions end there)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    state = llama_state(cfg, sd) if family == "llama" else gpt2_state(cfg, sd)
    cls = transformers.LlamaForCausalLM if family == "llama" else transformers.GPT2LMHeadModel
    torch.manual_seed(0)
    hf = cls(hf_config(cfg, family))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:  # a transformers version whose layout differs from this mapping
        raise ExportError(
            f"transformers {transformers.__version__} {cls.__name__} does not match the mapping "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if cfg.tie_embeddings:
        hf.tie_weights()
    diff = float("nan")

    def write(tmp: Path) -> None:
        nonlocal diff
        hf.save_pretrained(tmp)
        fast.save_pretrained(tmp)
        (tmp / "steplab.json").write_text(json.dumps(_provenance(cfg, provenance), indent=1))
        diff = compare_logits(model, tmp)  # checked before the directory lands at `out`
        if not diff <= tolerance:
            raise ExportError(
                f"transformers' logits differ from steplab's by {diff:.2e} (> {tolerance:g}) after "
                f"reloading the export; nothing was written to {out} (please report this)"
            )

    _write_atomically(out, write)
    return Exported(out=out, family=family, max_abs_diff=diff)


def compare_logits(model: GPT, out: Path, *, batch: int = 2, seed: int = 0) -> float:
    """Largest |logit difference| between steplab and transformers' reload of `out` on random tokens."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()  # float32, as saved
    g = torch.Generator().manual_seed(seed)
    T = min(model.cfg.block_size, 64)
    x = torch.randint(model.cfg.vocab_size, (batch, T), generator=g)
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(input_ids=x).logits
    return float((ours.float() - theirs.float()).abs().max())


def export_safetensors(
    model: GPT, tok: Tokenizer, out: Path, *, provenance: dict[str, Any] | None = None
) -> Exported:
    """The plain state dict (a tied head stored once, as wte.weight), config.json, tokenizer.json."""
    from steplab.checkpoint import model_state

    def write(tmp: Path) -> None:
        save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(_provenance(model.cfg, provenance), indent=1))
        (tmp / "tokenizer.json").write_text(json.dumps(tok.to_json()))

    _write_atomically(out, write)
    return Exported(out=out, family="steplab", max_abs_diff=None)


def load_safetensors(path: Path) -> tuple[GPT, Tokenizer]:
    """Read back an ``--format safetensors`` export: the model (eval mode, CPU) and its tokenizer."""
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
        cfg = ModelConfig(**meta["model"])
        tok = from_json(json.loads((path / "tokenizer.json").read_text()))
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not a steplab safetensors export ({type(e).__name__}: {e})") from None
    return build_model(cfg, weights), tok


def _provenance(cfg: ModelConfig, extra: dict[str, Any] | None) -> dict[str, Any]:
    from steplab import __version__

    return {
        "format": "steplab",
        "steplab_version": __version__,
        "model": dataclasses.asdict(cfg),
        **(extra or {}),
    }


def _tokenizer_sample(tok: Tokenizer) -> str:
    if isinstance(tok, CharTokenizer):
        return "".join(tok.chars) + "".join(reversed(tok.chars))
    return "Hello, world!  naïve café — 東京 🎉\n\tdef f(x):\n    return x ** 2\r\n \x00 end"


def _write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling and rename: an interrupted export leaves no half directory."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        write(tmp)
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- the command ---------------------------------------------------------------------------

FORMATS = ("hf", "safetensors")
