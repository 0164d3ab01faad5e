"""The search space: a small TOML file, one table per config field, and the values a trial
draws from it (`suggest_params`) set on the base config (`apply`).

    [optim.lr]
    type = "log_float"        # float, log_float, int, log_int or categorical
    low = 1e-4
    high = 1e-2

    [optim.name]
    type = "categorical"
    choices = ["adamw", "adam"]
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab.config import SECTIONS, RunConfig, set_value
from steplab.errors import ConfigError, SteplabError
from steplab.loop.session import check

KINDS = ("float", "log_float", "int", "log_int", "categorical")


def optuna_module() -> Any:
    """optuna, imported when a study needs it (`import steplab` stays light)."""
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency, but keep the error clear
        raise SteplabError("steplab tune needs optuna: pip install optuna") from None
    return optuna


@dataclass(frozen=True)
class Param:
    key: str  # "section.field", e.g. "optim.lr"
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()


def parse_space(data: dict[str, Any], source: str = "space") -> list[Param]:
    """Search-space tables (``{"optim": {"lr": {"type": ...}}}``) as `Param`s, checked against
    the config tree: an unknown field, kind or range is an error naming the table."""
    out = []
    for section, fields in data.items():
        if section not in SECTIONS or not isinstance(fields, dict):
            raise ConfigError(f"{source}: [{section}] is not a config section (valid: {', '.join(SECTIONS)})")
        names = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for name, spec in fields.items():
            key = f"{section}.{name.replace('-', '_')}"
            where = f"{source}: [{section}.{name}]"
            if key.split(".")[1] not in names:
                raise ConfigError(f"{where}: {section} has no field {name!r}")
            if not isinstance(spec, dict) or spec.get("type") not in KINDS:
                raise ConfigError(f"{where}: needs type = one of {', '.join(KINDS)}")
            kind = spec["type"]
            unknown = set(spec) - {"type", "low", "high", "step", "choices"}
            if unknown:
                raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
            if kind == "categorical":
                choices = spec.get("choices")
                if not isinstance(choices, list) or not choices:
                    raise ConfigError(f"{where}: categorical needs a non-empty list `choices`")
                for c in choices:  # each choice must be a valid value of the field
                    set_value(RunConfig(), key, c, where=f"{where} choice {c!r}")
                out.append(Param(key, kind, choices=tuple(choices)))
                continue
            low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
                raise ConfigError(f"{where}: needs numbers low < high (got {low!r}, {high!r})")
            if kind.startswith("log") and low <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0 (got {low})")
            if kind.startswith("log") and step is not None:
                raise ConfigError(f"{where}: `step` cannot be combined with a log scale")
            set_value(RunConfig(), key, low if kind.endswith("float") else int(low), where=f"{where} low")
            out.append(Param(key, kind, float(low), float(high), None if step is None else float(step)))
    if not out:
        raise ConfigError(f"{source}: the search space is empty")
    return out


def load_space(path: str | Path) -> list[Param]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space: {p} not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--space: {p} is not valid TOML ({e})") from None
    return parse_space(data, str(p))


def suggest_params(trial: Any, space: Sequence[Param]) -> dict[str, Any]:
    """Draw the trial's value of each parameter (Optuna's suggest_*), named by its config key."""
    out: dict[str, Any] = {}
    for p in space:
        assert p.low is not None or p.kind == "categorical"
        if p.kind == "categorical":
            out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind.endswith("int"):
            out[p.key] = trial.suggest_int(
                p.key, int(p.low or 0), int(p.high or 0), step=int(p.step or 1), log=p.kind == "log_int"
            )
        else:
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.kind == "log_float")
    return out


def apply(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """`base` with `params` set (a copy); the result is validated."""
    cfg = copy.deepcopy(base)
    for key, value in params.items():
        set_value(cfg, key, value, where=f"--space {key}")
    return check(cfg)
