"""What a checkpoint must satisfy before it is loaded into a run: its counters, its model.

`checkpoint.load` refuses a state.json whose counters are not what steplab writes (a
tampered ``step = -5`` would log steps twice); `checkpoint.restore` refuses a checkpoint of
another model, by setting (`model_differences`: same shapes can still be another function,
``n_head`` or ``norm_eps``) and by tensor shape (`check_weights`); `check_structure` refuses an
optimizer.pt or rng.pt that unpickled safely but is not what steplab writes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from steplab.config import ModelConfig, flag
from steplab.errors import CheckpointError
from steplab.rng import is_rng_state

# The fields of `checkpoint.TrainState` (state.json), with their rule in `checked_state`.
STATE_FIELDS = ("step", "tokens", "train_seconds", "best_val_loss", "best_step", "metrics_lines", "guard")


def checked_state(data: Any, where: Path) -> dict[str, Any]:
    """The fields of a `TrainState` from a state.json's content, every one checked (a tampered file is refused).

    Refused with a `CheckpointError` naming the file: an unknown field, a count that is not a
    non-negative integer, a time or loss that is not a finite number, a best step after the
    step, a guard state that is not a map of names to finite non-negative numbers.
    """

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: {what}; the checkpoint was tampered with or is not steplab's")

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "events"}  # an unused list in older checkpoints
    unknown = sorted(set(data) - set(STATE_FIELDS))
    if unknown:
        raise bad(f"unknown fields {unknown}")

    checks = {
        "step": (_count, "an integer >= 0"),
        "tokens": (_count, "an integer >= 0"),
        "train_seconds": (_number, "a finite number >= 0"),
        "best_val_loss": (_optional(_number), "none or a finite number >= 0"),
        "best_step": (_optional(_count), "none or an integer >= 0"),
        "metrics_lines": (_optional(_count), "none or an integer >= 0"),
        "guard": (_number_map, "a map of names to finite numbers >= 0"),
    }
    for name, (ok, want) in checks.items():
        if name in data and not ok(data[name]):
            raise bad(f"{name} must be {want} (got {data[name]!r})")
    best, step = data.get("best_step"), data.get("step", 0)
    if best is not None and best > step:
        raise bad(f"best_step {best} is after step {step}")
    return data


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def _optional(rule: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or rule(v)


def _number_map(v: Any) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and _number(x) for k, x in v.items())


# Model settings that do not change the function the weights compute: `attention` picks a
# kernel (sdpa or matmul) for the same attention.
SAME_FUNCTION = ("attention",)


def model_differences(saved: ModelConfig, current: ModelConfig) -> list[str]:
    """Every model setting whose value differs, as ``--model.x A (checkpoint) vs B (this run)``.

    Derived values compare resolved: a vocabulary size of 0 (taken from the tokenizer) matches
    any, and an unset n_kv_head is n_head.
    """
    out = []
    for f in dataclasses.fields(ModelConfig):
        if f.name in SAME_FUNCTION:
            continue
        a, b = getattr(saved, f.name), getattr(current, f.name)
        if f.name == "vocab_size" and 0 in (a, b):
            continue
        if f.name == "n_kv_head":  # unset on both sides: follows n_head, compared there
            if a is None and b is None:
                continue
            a, b = saved.kv_heads, current.kv_heads
        if a != b:
            out.append(f"{flag('model', f.name)} {a} (checkpoint) vs {b} (this run)")
    return out


def check_weights(model_cfg: Any, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse a checkpoint of another model shape, naming the first mismatch."""
    from steplab.model import GPT

    with torch.device("meta"):
        ref = GPT(model_cfg)
    own = ref.state_dict()
    tied = set(own) - set(param_names(ref))
    missing = [k for k in own if k not in weights and k not in tied]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        raise CheckpointError(
            f"{where}: checkpoint does not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, t in weights.items():
        if own[k].shape != t.shape:
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(t.shape)} in the checkpoint but {tuple(own[k].shape)} in the model "
                "(the checkpoint is of a different model shape)"
            )


def param_names(model: nn.Module) -> list[str]:
    """Names of a model's parameters and buffers with tied ones once (works on the meta device)."""
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


def check_structure(path: Path, optimizer: Any, rng: Any) -> None:
    """Refuse optimizer and RNG files that unpickled safely but are not what steplab writes."""
    if optimizer is not None and not is_optimizer_state(optimizer):
        raise CheckpointError(
            f"{path}: optimizer.pt is not an optimizer state (damaged or foreign checkpoint)"
        )
    if rng is not None and not is_rng_state(rng):
        raise CheckpointError(f"{path}: rng.pt is not a set of RNG states (damaged or foreign checkpoint)")


def is_optimizer_state(sd: Any) -> bool:
    """A torch optimizer's state dict (state, param_groups), or a chain of them (`steplab.optim.chain`)."""
    if not isinstance(sd, dict):
        return False
    if "chain" in sd:
        return isinstance(sd["chain"], list) and all(is_optimizer_state(part) for part in sd["chain"])
    groups = sd.get("param_groups")
    return (
        isinstance(sd.get("state"), dict)
        and isinstance(groups, list)
        and all(isinstance(g, dict) for g in groups)
    )
