"""Parameter-efficient fine-tuning: freezing parameters by name.

A frozen parameter has ``requires_grad=False``: no gradient is computed for it, the
optimizer's groups leave it out (`steplab.optim.param_groups`), and a fine-tune's checkpoint
stores only the parameters that train (`steplab.checkpoint`), the base model's being a
reference to the ``--init-from`` directory.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

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


def trainable_names(model: nn.Module) -> set[str]:
    """Names of the parameters that train (tied ones under their first name, as in a state dict)."""
    return {n for n, p in model.named_parameters() if p.requires_grad}
