"""Parameter-efficient fine-tuning: freezing parameters by name, and LoRA through peft.

A frozen parameter has ``requires_grad=False``: no gradient is computed for it, the
optimizer's groups leave it out (`steplab.optim.param_groups`), and a fine-tune's checkpoint
stores only the parameters that train (`steplab.checkpoint`), the base model's being a
reference to the ``--init-from`` directory.

LoRA (Hu et al. 2021) adds a low-rank update ``(alpha / r) B A`` beside each adapted matrix,
with B starting at zero (so the model starts as the pretrained one); peft's
`inject_adapter_in_model` puts its layers into the model in place and freezes everything
else. `merge_lora` folds trained adapters back into plain weights (for eval, sample, export).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

import torch
import torch.nn as nn

from steplab.errors import ConfigError


def patterns(spec: str | None) -> list[str]:
    """'wte, blocks.0.*' -> ['wte', 'blocks.0.*']."""
    return [p.strip() for p in (spec or "").split(",") if p.strip()]


def matches(name: str, pattern: str) -> bool:
    """fnmatch on the full name; a module's name (``wte``, ``blocks.0``) covers what is under it."""
    return fnmatchcase(name, pattern) or fnmatchcase(name, pattern + ".*")


def freeze(model: nn.Module, spec: str | None) -> list[str]:
    """Freeze the parameters matching `spec` (`--train.freeze`); return their names.

    A tied weight answers to both its names (``lm_head.weight`` is ``wte.weight``). A pattern
    that matches nothing, or a spec that leaves nothing to train, is a `ConfigError`.
    """
    pats = patterns(spec)
    if not pats:
        return []
    named = list(model.named_parameters(remove_duplicate=False))
    for pat in pats:
        if not any(matches(n, pat) for n, _ in named):
            examples = ", ".join(n for n, _ in named[:4])
            raise ConfigError(
                f"--train.freeze: {pat!r} matches no parameter (names look like {examples}, ...)"
            )
    frozen = {id(p) for n, p in named if any(matches(n, pat) for pat in pats)}
    for _, p in named:
        if id(p) in frozen:
            p.requires_grad_(False)
    if all(not p.requires_grad for _, p in named):
        raise ConfigError(f"--train.freeze {spec!r} freezes every parameter: nothing would train")
    return [n for n, p in model.named_parameters() if id(p) in frozen]


# Every linear layer of a block: the fused q/k/v, the attention output, the MLP's in and out.
# (peft matches module names by suffix: "proj" is both attn.proj and mlp.proj.)
LORA_TARGETS = ["qkv", "proj", "fc"]
LORA_A, LORA_B, BASE = ".lora_A.default.weight", ".lora_B.default.weight", ".base_layer."


def add_lora(model: nn.Module, rank: int, alpha: int) -> None:
    """Inject LoRA adapters of `rank` into `model` (in place); only they train afterwards."""
    if not rank:
        return
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError(
            "--train.lora-rank needs the lora extra: pip install 'steplab[lora]' (peft)"
        ) from None
    lora = LoraConfig(r=rank, lora_alpha=alpha, target_modules=LORA_TARGETS, lora_dropout=0.0, bias="none")
    inject_adapter_in_model(lora, model)


def merge_lora(weights: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Plain weights from a LoRA model's: ``X.weight = X.base_layer.weight + scale * B @ A``.

    `weights` may hold the base under plain names already (``X.weight``) and only the adapters.
    """
    out = {k.replace(BASE, "."): v for k, v in weights.items() if not k.endswith((LORA_A, LORA_B))}
    for name in [k for k in weights if k.endswith(LORA_A)]:
        module = name[: -len(LORA_A)]
        a, b = weights[name].float(), weights[module + LORA_B].float()
        out[module + ".weight"] = out[module + ".weight"].float() + scale * (b @ a)
    return out
