"""Values: how a raw value from a flag or a file becomes a typed, range-checked one.

`coerce` turns a CLI string or a TOML value into the field's type, `check_value` holds it to
the field's bounds, naming the flag the user typed (``--optim.lr must be > 0 (got -1)``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal

from steplab.errors import ConfigError


def field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _options(tp: Any) -> list[Any]:
    """Flatten `X | None | Literal[...]` into its member types."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(tp) for m in _options(a)]
    return [tp]


def describe(tp: Any) -> str:
    parts = []
    for o in _options(tp):
        if typing.get_origin(o) is Literal:
            parts.append("|".join(str(a) for a in typing.get_args(o)))
        elif o is type(None):
            parts.append("none")
        else:
            parts.append(getattr(o, "__name__", str(o)))
    return " or ".join(parts)


INT_LIMIT = 2**63 - 1  # integers beyond a 64-bit signed range are refused outright


def exact_int(value: Any) -> int | None:
    """`value` as an integer, exactly: "12", 12, 12.0, "1e3"; None when it is not a whole number.

    Digits are parsed as digits (never through a float, which would turn
    99999999999999999999999 into 99999999999999991611392); a float or exponent form is
    accepted only where a float holds it exactly (up to 2**53).
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, float) and value.is_integer() and abs(value) <= 2**53:
        return int(value)
    return None


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Turn `value` (a CLI string or a TOML value) into a value of type `tp`."""
    opts = _options(tp)
    is_str = isinstance(value, str)
    if value is None or (is_str and value.lower() in ("none", "null") and type(None) in opts):
        if type(None) in opts:
            return None
        raise ConfigError(f"{where} cannot be none (expected {describe(tp)})")
    # Literal choices first (so `auto` matches before float parsing fails).
    for o in opts:
        if typing.get_origin(o) is Literal and value in typing.get_args(o):
            return value
    for o in opts:
        try:
            if o is bool:
                if isinstance(value, bool):
                    return value
                if is_str and value.lower() in ("true", "1", "yes", "on"):
                    return True
                if is_str and value.lower() in ("false", "0", "no", "off"):
                    return False
            elif o is int:
                if (n := exact_int(value)) is not None:
                    if abs(n) > INT_LIMIT:
                        raise OverflowError
                    return n
            elif o is float:
                if isinstance(value, bool):
                    continue
                if isinstance(value, (int, float)):
                    return float(value)
                if is_str:
                    return float(value)
            elif o is str:
                if is_str:
                    return value
        except ValueError:
            continue
        except OverflowError:  # a size nothing could allocate: refused before anything is built
            raise ConfigError(f"{where} is too large (got {value!r}; at most {INT_LIMIT})") from None
    literal = [a for o in opts if typing.get_origin(o) is Literal for a in typing.get_args(o)]
    if literal and not any(o in (int, float, bool) for o in opts):
        raise ConfigError(f"{where} must be one of {', '.join(map(str, literal))} (got {value!r})")
    raise ConfigError(f"{where} must be {describe(tp)} (got {value!r})")


def check_type(tp: Any, value: Any, where: str) -> Any:
    """`value` if it is of type `tp`, else a `ConfigError` naming it: the CLI's rules for a value
    set from Python (`cfg.optim.lr = "abc"`). An integral float where an int is expected is
    returned as the int, as `coerce` does for the CLI and TOML files."""
    for o in _options(tp):
        if typing.get_origin(o) is Literal:
            ok = value in typing.get_args(o) and not isinstance(value, bool)
        elif o is type(None):
            ok = value is None
        elif o is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif o is int:
            if isinstance(value, float) and value.is_integer():
                return int(value)
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, o)
        if ok:
            return value
    raise ConfigError(f"{where} must be {describe(tp)} (got {value!r})")


def check_value(f: dataclasses.Field, value: Any, where: str) -> None:
    md = f.metadata
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    if "gt" in md and not value > md["gt"]:
        raise ConfigError(f"{where} must be > {md['gt']:g} (got {value:g})")
    if "ge" in md and not value >= md["ge"]:
        raise ConfigError(f"{where} must be >= {md['ge']:g} (got {value:g})")
    if "lt" in md and not value < md["lt"]:
        raise ConfigError(f"{where} must be < {md['lt']:g} (got {value:g})")
    if "le" in md and not value <= md["le"]:
        raise ConfigError(f"{where} must be <= {md['le']:g} (got {value:g})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where} must be finite (got {value})")


def did_you_mean(word: str, candidates: Sequence[str], template: str = "did you mean {}? ") -> str:
    """A hint naming the closest candidate ("" when none is close): for misspelt keys and flags."""
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return template.format(match[0]) if match else ""
