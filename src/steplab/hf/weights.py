"""steplab parameter names <-> transformers parameter names: one list of rules, read both ways.

A `Rule` says which transformers tensors one steplab tensor is. steplab fuses q, k and v into
one ``qkv`` matrix and SwiGLU's gate and up into one ``fc``: their rules list the parts, in
order, and the steplab tensor is their concatenation along dim 0. GPT-2's ``Conv1D`` stores
(in, out), so its matrices are transposed. Both RoPE implementations use the rotate-half
layout, so q and k need no permutation. Export (`to_hf`) and import (`from_hf`) read the same
rules, which is what makes an imported model export back to the same tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from steplab.config import ModelConfig
from steplab.hf.families import Family, logit_scale


@dataclass(frozen=True)
class Rule:
    ours: str | None  # None: a zero bias GPT-2 needs where steplab has none (export only)
    theirs: tuple[str, ...]
    sizes: tuple[int, ...] = ()  # rows of each part when `theirs` has several
    transpose: bool = False  # GPT-2's Conv1D layout


def rules(cfg: ModelConfig, fam: Family) -> list[Rule]:
    return _gpt2_rules(cfg) if fam.name == "gpt2" else _llama_rules(cfg, fam)


def _llama_rules(cfg: ModelConfig, fam: Family) -> list[Rule]:
    nh, nkv, hs, H = cfg.n_head, cfg.kv_heads, cfg.head_dim, cfg.mlp_hidden
    out = [Rule("wte.weight", ("model.embed_tokens.weight",)), Rule("norm_f.weight", ("model.norm.weight",))]
    if not cfg.tie_embeddings:
        out.append(Rule("lm_head.weight", ("lm_head.weight",)))
    n1, n2 = fam.norm_names
    for i in range(cfg.n_layer):
        s, d = f"blocks.{i}.", f"model.layers.{i}."
        out += [
            Rule(s + "norm1.weight", (d + f"{n1}.weight",)),
            Rule(s + "norm2.weight", (d + f"{n2}.weight",)),
        ]
        if cfg.qk_norm:
            out += [
                Rule(s + "attn.q_norm.weight", (d + "self_attn.q_norm.weight",)),
                Rule(s + "attn.k_norm.weight", (d + "self_attn.k_norm.weight",)),
            ]
        for kind in ("weight", "bias") if cfg.bias else ("weight",):
            qkv = tuple(d + f"self_attn.{p}_proj.{kind}" for p in "qkv")
            fc = (
                (d + f"mlp.gate_proj.{kind}", d + f"mlp.up_proj.{kind}")
                if fam.gated
                else (d + f"mlp.up_proj.{kind}",)
            )
            out += [
                Rule(s + f"attn.qkv.{kind}", qkv, (nh * hs, nkv * hs, nkv * hs)),
                Rule(s + f"attn.proj.{kind}", (d + f"self_attn.o_proj.{kind}",)),
                Rule(s + f"mlp.fc.{kind}", fc, (H, H) if fam.gated else ()),
                Rule(s + f"mlp.proj.{kind}", (d + f"mlp.down_proj.{kind}",)),
            ]
    return out


def _gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    C, H = cfg.n_embd, cfg.mlp_hidden

    def bias(ours: str, theirs: str, n: int) -> Rule:
        return Rule(ours if cfg.bias else None, (theirs,), (n,))

    out = [
        Rule("wte.weight", ("transformer.wte.weight",)),
        Rule("wpe.weight", ("transformer.wpe.weight",)),
        Rule("norm_f.weight", ("transformer.ln_f.weight",)),
        bias("norm_f.bias", "transformer.ln_f.bias", C),
    ]
    if not cfg.tie_embeddings:
        out.append(Rule("lm_head.weight", ("lm_head.weight",)))
    for i in range(cfg.n_layer):
        s, d = f"blocks.{i}.", f"transformer.h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            out += [
                Rule(s + f"{ours}.weight", (d + f"{theirs}.weight",)),
                bias(s + f"{ours}.bias", d + f"{theirs}.bias", C),
            ]
        for ours, theirs, n in (
            ("attn.qkv", "attn.c_attn", 3 * C),
            ("attn.proj", "attn.c_proj", C),
            ("mlp.fc", "mlp.c_fc", H),
            ("mlp.proj", "mlp.c_proj", C),
        ):
            out += [
                Rule(s + f"{ours}.weight", (d + f"{theirs}.weight",), transpose=True),
                bias(s + f"{ours}.bias", d + f"{theirs}.bias", n),
            ]
    return out


def to_hf(cfg: ModelConfig, fam: Family, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """steplab's state dict -> the transformers class's (a muP model folded into standard form first)."""
    sd = fold_mup(cfg, sd)
    out: dict[str, torch.Tensor] = {}
    for r in rules(cfg, fam):
        t = sd[r.ours] if r.ours is not None else torch.zeros(r.sizes[0])
        if r.transpose:
            t = t.t()
        parts = t.split(list(r.sizes), dim=0) if len(r.theirs) > 1 else (t,)
        out.update({name: p.contiguous() for name, p in zip(r.theirs, parts, strict=True)})
    return out


def from_hf(cfg: ModelConfig, fam: Family, hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers state dict -> steplab's (float32; learned positions cropped to block_size)."""
    out: dict[str, torch.Tensor] = {}
    for r in rules(cfg, fam):
        if r.ours is None:
            continue
        t = torch.cat([hf[n] for n in r.theirs], dim=0) if len(r.theirs) > 1 else hf[r.theirs[0]]
        out[r.ours] = (t.t() if r.transpose else t).float().contiguous()
    if "wpe.weight" in out:
        out["wpe.weight"] = out["wpe.weight"][: cfg.block_size].contiguous()
    return out


def expected_keys(cfg: ModelConfig, fam: Family) -> set[str]:
    """The transformers tensors an import reads (a tied head is not among them)."""
    return {n for r in rules(cfg, fam) if r.ours is not None for n in r.theirs}


def fold_mup(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A muP model in standard form: transformers scales scores by 1/sqrt(hs), so steplab's muP
    score scale goes into q (exact: RoPE is linear in q), or into the q-norm's gain when there is
    one, and the logit scale into an untied head. `family_for` refuses the one case that cannot
    fold (a tied head with a scale != 1)."""
    from steplab.model import attention_scale

    scale = attention_scale(cfg)
    if scale is None and logit_scale(cfg) == 1.0:
        return sd
    sd = dict(sd)
    q_rows = cfg.n_head * cfg.head_dim
    if scale is not None:
        factor = scale * math.sqrt(cfg.head_dim)
        where = ("attn.q_norm.weight",) if cfg.qk_norm else ("attn.qkv.weight", "attn.qkv.bias")
        for name in [n for n in sd if n.endswith(where)]:
            t = sd[name].clone()
            t[:q_rows] *= factor
            sd[name] = t
    if not cfg.tie_embeddings and logit_scale(cfg) != 1.0:
        sd["lm_head.weight"] = sd["lm_head.weight"] * logit_scale(cfg)
    return sd
