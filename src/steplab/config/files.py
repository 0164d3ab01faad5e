"""The config as data: a nested dict, a TOML file, and the dotted names of its settings.

A config file is a serialized `RunConfig`, and the resolved config is written into every run
directory as `config.toml`. TOML has no null, so an unset optional field is written as
``"none"``: a file read back gives the same config whatever defaults it is read onto.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steplab.config.schema import BUDGET, SECTIONS, RunConfig, clear_budget, set_value
from steplab.config.values import did_you_mean
from steplab.errors import ConfigError


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    """A plain nested dict of the whole config, `None` values included."""
    return dataclasses.asdict(cfg)


NONE = "none"  # how TOML, which has no null, spells an unset optional field


def _toml_safe(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (_toml_safe(v) if isinstance(v, dict) else NONE if v is None else v) for k, v in d.items()}


def update_from_dict(cfg: RunConfig, data: dict[str, Any], source: str) -> RunConfig:
    """Apply a nested dict (from TOML or JSON) onto `cfg`; unknown keys are errors.

    A budget limit in `data` replaces `cfg`'s whole budget (see `BUDGET`)."""
    train = data.get("train")
    if isinstance(train, dict) and any(k.replace("-", "_") in BUDGET for k in train):
        clear_budget(cfg)
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in SECTIONS:
                hint = did_you_mean(key, list(SECTIONS), "did you mean [{}]? ")
                raise ConfigError(f"{source}: unknown section [{key}] ({hint}valid: {', '.join(SECTIONS)})")
            for sub, v in value.items():
                set_value(cfg, f"{key}.{sub}", v, where=f"{source}: {key}.{sub}")
        else:
            set_value(cfg, key, value, where=f"{source}: {key}")
    return cfg


def load_toml(path: str | Path, base: RunConfig | None = None) -> RunConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    return update_from_dict(base or RunConfig(), data, str(p))


def dump_toml(cfg: RunConfig) -> str:
    """Every field written out, unset optional ones as ``"none"``: a config file read back
    gives the same config whatever the defaults it is read onto (`from_dict(to_dict(c)) == c`)."""
    import tomli_w

    return tomli_w.dumps(_toml_safe(to_dict(cfg)))


def from_dict(data: dict[str, Any]) -> RunConfig:
    return update_from_dict(RunConfig(), data, "config")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
