"""Parameter groups: one grouping rule for every optimizer, and muP's per-group learning rates.

`param_groups` splits a model's parameters into named groups (hidden matrices, embeddings,
untied output head, vectors = norms and biases) with their weight decay and learning-rate
multiplier; every optimizer is built from those groups, so the rule lives in one place. The
training loop sets ``group["lr"] = peak_lr * schedule * group["lr_mult"]`` each step.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch.nn as nn

from steplab.config import ModelConfig, OptimConfig

Groups = list[dict[str, Any]]


def param_groups(model: nn.Module, cfg: OptimConfig, model_cfg: ModelConfig | None = None) -> Groups:
    """Named parameter groups: no decay on vectors and (unless asked) embeddings.

    Under muP the groups' learning rates also scale with the width multiplier (see
    `mup_lr_mults`), so a learning rate tuned at the base width transfers.
    """
    buckets: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "head": [], "vector": []}
    for name, p in model.named_parameters():  # a tied weight appears once, under wte
        if not p.requires_grad:
            continue
        if name.startswith(("wte.", "wpe.", "value_embeds.")):
            buckets["embed"].append(p)
        elif name.startswith("lm_head."):
            buckets["head"].append(p)
        elif p.dim() < 2:
            buckets["vector"].append(p)
        else:
            buckets["matrix"].append(p)
    mup = {"matrix": 1.0, "embed": 1.0, "head": 1.0, "vector": 1.0}
    if model_cfg is not None and model_cfg.parametrization == "mup":
        mup = mup_lr_mults(cfg.name, model_cfg.n_embd / model_cfg.mup_base_width)
    settings = {
        "matrix": (cfg.weight_decay, mup["matrix"]),
        "embed": (cfg.weight_decay if cfg.decay_embeddings else 0.0, cfg.embed_lr_mult * mup["embed"]),
        "head": (cfg.weight_decay, cfg.head_lr_mult * mup["head"]),
        "vector": (0.0, mup["vector"]),
    }
    return [
        {"name": k, "params": ps, "weight_decay": settings[k][0], "lr_mult": settings[k][1]}
        for k, ps in buckets.items()
        if ps
    ]


# Which muP learning-rate rule an optimizer follows (Tensor Programs V, Table 8, with the
# output multiplier 1/m in the model): "adam" for updates whose size does not depend on the
# gradient's scale (Adam, AdamW, Lion, ...), "sgd" for updates proportional to the gradient.
MUP_RULE: dict[str, str] = {
    "adamw": "adam",
    "adam": "adam",
    "sgd": "sgd",
    "lion": "adam",  # sign updates: size independent of the gradient's scale
    "muon": "adam",  # orthogonalised updates, RMS matched to AdamW
    "schedulefree_adamw": "adam",
    "adafactor": "adam",
    "soap": "adam",
    "adagrad": "adam",
    "rmsprop": "adam",
}


def mup_lr_mults(optimizer: str, width_mult: float) -> dict[str, float]:
    """muP learning-rate multipliers per group for width multiplier m = n_embd / base width.

    Adam rule: hidden matrices 1/m, everything else 1 (embeddings, vectors, and the head,
    whose 1/m output multiplier already shrinks its effect). SGD rule: hidden matrices 1,
    embeddings, head and vectors m.
    """
    m = width_mult
    rule = MUP_RULE.get(optimizer)
    if rule is None:
        warnings.warn(
            f"muP has no learning-rate rule registered for optimizer {optimizer!r}; using the Adam rule "
            "(add it to steplab.optim.MUP_RULE)",
            stacklevel=2,
        )
        rule = "adam"
    if rule == "sgd":
        return {"matrix": 1.0, "embed": m, "head": m, "vector": m}
    return {"matrix": 1.0 / m, "embed": 1.0, "head": 1.0, "vector": 1.0}
