"""Legend labels that say what differs between runs ("lr=3e-3", "AdamW lr=1e-3 (seed)"),
not just their directory names, and no config jargon (``optim.name``, ``seed_adamw``)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from steplab.config import flatten
from steplab.reports.runs import Run

OPTIMIZER_NAMES = {
    "adamw": "AdamW",
    "adam": "Adam",
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
    "lion": "Lion",
    "muon": "Muon",
    "schedulefree_adamw": "Schedule-free AdamW",
    "adafactor": "Adafactor",
    "soap": "SOAP",
}
SHORT_KEYS = {"optim.name": "optim", "optim.lr": "lr", "optim.weight_decay": "wd", "train.seed": "seed"}
# Settings that differ between runs without making them different experiments.
IGNORED = {"train.progress", "train.tensorboard", "train.threads", "train.device", "model.vocab_size"}
MAX_KEYS = 3  # more differences than this: the legend keeps the run names


def optimizer_name(name: str) -> str:
    return OPTIMIZER_NAMES.get(name, name)


def short_key(key: str) -> str:
    """``optim.lr`` -> ``lr``, ``model.mlp`` -> ``mlp``: the field, without its section."""
    return SHORT_KEYS.get(key, key.rpartition(".")[2])


def fmt_value(value: Any) -> str:
    """3e-3 rather than 0.003, 0.1 as is, 128 as is, strings as they are."""
    if isinstance(value, str):
        try:
            value = float(value) if any(c in value for c in ".e") else int(value)
        except ValueError:
            return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value != 0 and math.isfinite(value) and abs(value) < 0.01:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:g}"


def setting(key: str, value: Any) -> str:
    """One setting as a legend shows it: the optimizer by its name, others as ``key=value``."""
    if key == "optim.name":
        return optimizer_name(str(value))
    return f"{short_key(key)}={fmt_value(value)}"


def describe(settings: Sequence[tuple[str, Any]]) -> str:
    """Settings as one label: ``AdamW lr=1e-3``, ``mlp=swiglu``."""
    ordered = sorted(settings, key=lambda kv: kv[0] != "optim.name")  # the optimizer first
    return " ".join(setting(k, v) for k, v in ordered)


def difference_labels(configs: Mapping[str, Mapping[str, Any]], max_keys: int = MAX_KEYS) -> dict[str, str]:
    """Legend labels for runs (`configs`: name -> flattened config): each run's name followed by
    the settings that differ between the runs, ``base: lr=1e-3``. With one run, no
    difference, too many to read, or a name that already says them (``lr3e-3``), the name."""
    missing = object()
    keys = sorted({k for c in configs.values() for k in c} - IGNORED)
    differ = [k for k in keys if len({repr(c.get(k, missing)) for c in configs.values()}) > 1]
    if len(configs) < 2 or not differ or len(differ) > max_keys:
        return {name: name for name in configs}
    out = {}
    for name, c in configs.items():
        values = [c.get(k) for k in differ]
        said = all(fmt_value(v).lower() in name.lower() or str(v).lower() in name.lower() for v in values)
        out[name] = name if said else f"{name}: {describe(list(zip(differ, values, strict=True)))}"
    return out


def legends_of(runs: Sequence[Run]) -> tuple[dict[str, str], set[str]]:
    """Legend texts (`difference_labels` of the runs' configs) and the diverged runs' names,
    for `loss_curves`/`dashboard` of loaded runs (`steplab plot`, `steplab report`)."""
    legends = difference_labels({r.name: flatten(r.config) for r in runs})
    return legends, {r.name for r in runs if r.status == "diverged"}


def variant_label(name: str, overrides: Sequence[tuple[str, str]], *, named: bool, lr: float | None) -> str:
    """A compare variant's legend: its settings (``Muon lr=1e-2``); a named variant's settings
    are summed up as its optimizer and lr, with the rest of its name as a tag
    (``seed_adamw`` setting adamw at 1e-3 -> ``AdamW lr=1e-3 (seed)``)."""
    keys = dict(overrides)
    shown: list[tuple[str, Any]] = [
        (k, v) for k, v in overrides if not named or k in ("optim.name", "optim.lr")
    ]
    if lr is not None and "optim.lr" not in keys and ("optim.name" in keys):
        shown.append(("optim.lr", lr))  # the optimizer's default lr differs with it
    if not named:
        return describe(shown) or name
    if " " in name:  # a name written for people already
        return name
    words = [w for w in name.replace("-", "_").split("_") if w and w.lower() != str(keys.get("optim.name"))]
    tag = " ".join(words)
    text = describe(shown)
    if not text:
        return name
    return f"{text} ({tag})" if tag else text
