"""Optimizers: a registry keyed by name, and one parameter-grouping rule for all of them.

- `groups`: `param_groups` (hidden matrices, embeddings, head, vectors) and muP's multipliers.
- `registry`: `OPTIMIZERS` (name -> builder), `DEFAULT_LR`, `build_optimizer`, `set_lr`, and
  the warnings for settings an optimizer ignores.
- `muon`: the batched Muon and its pure functions (`newton_schulz`, `lr_scale`).
- `chain`: several optimizers as one (`Chain`), and schedule-free's train/eval modes.
"""

from steplab.optim.chain import Chain, eval_mode, has_modes, train_mode
from steplab.optim.groups import MUP_RULE, Groups, mup_lr_mults, param_groups
from steplab.optim.muon import Muon, lr_scale, newton_schulz, split_for_muon
from steplab.optim.registry import (
    DEFAULT_LR,
    IGNORES,
    OPTIMIZERS,
    Builder,
    build_optimizer,
    check_name,
    ignored_settings,
    set_lr,
    state_bytes,
)

__all__ = [
    "DEFAULT_LR",
    "IGNORES",
    "MUP_RULE",
    "OPTIMIZERS",
    "Builder",
    "Chain",
    "Groups",
    "Muon",
    "build_optimizer",
    "check_name",
    "eval_mode",
    "has_modes",
    "ignored_settings",
    "lr_scale",
    "mup_lr_mults",
    "newton_schulz",
    "param_groups",
    "set_lr",
    "split_for_muon",
    "state_bytes",
    "train_mode",
]
