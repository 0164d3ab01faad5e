"""Typed command options: one dataclass per command, its fields the command's flags.

A command's options are a `kw_only` dataclass whose fields are declared with
`steplab.config.opt`, the helper of the config tree: the same one-line help, bounds, `coerce`
and `check_value`, so a command flag is typed, ranged and reported like a config flag
(``--top-p must be <= 1 (got 2)``). `add_fields` turns a dataclass into argparse arguments
and `read_fields` turns what argparse collected back into the dataclass. Field metadata
beyond the help and the bounds:

- ``positional=True``: taken positionally, or as a flag (``steplab plot RUN...`` or
  ``--run RUN``, repeatable);
- ``flag="--run"``: the flag's spelling when it is not the field's name;
- ``metavar="RUN"``: the placeholder shown in the help.

A `bool` is a switch (``--json``); a list takes one or more values and may be repeated
(``--vary A=1,2 --vary B=3,4``; numbers may be comma-separated: ``--widths 64,128``); a
list of lists keeps one list per occurrence (``--variant NAME K=V ... --variant ...``).

Commands that build a `RunConfig` derive their options from `ConfigOptions` and also take
every ``--section.field`` flag of the config sections they read (generated in
`steplab.cli.parser`); `resolve_config` applies them in the order preset → ``--config FILE``
→ flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from steplab.config import (
    BUDGET,
    RunConfig,
    check_value,
    clear_budget,
    coerce,
    describe,
    flag,
    load_toml,
    opt,
    set_value,
)
from steplab.errors import ConfigError

CHECKPOINTS = Literal["latest", "best"]


@dataclass(frozen=True)
class Command:
    """One `steplab` command: its options, its handler and the config sections it reads.

    The handler is called as ``handler(options)``, or ``handler(options, cfg)`` with the
    resolved `RunConfig` when the command reads config sections; `base` gives the config
    that the preset would otherwise provide (`train --resume`: the run's own)."""

    name: str  # "train", or "data prepare" for a subcommand of a group
    options: type
    handler: Callable[..., int]
    sections: tuple[str, ...] = ()
    base: Callable[[Any], RunConfig | None] | None = None

    @property
    def summary(self) -> str:
        """The docstring's first line, as `steplab --help` lists it."""
        line = (self.options.__doc__ or "").strip().splitlines()[0].rstrip(".")
        return line if line[1:2].isupper() else line[:1].lower() + line[1:]

    @property
    def description(self) -> str:
        return (self.options.__doc__ or "").strip()


@dataclass(kw_only=True)
class ConfigOptions:
    """The options every config-reading command shares: where the config starts."""

    preset: str | None = opt(
        None, "start from this preset (see `steplab presets`; none: default)", metavar="NAME"
    )
    config: str | None = opt(
        None, "a TOML config file (a serialized RunConfig), applied over the preset", metavar="FILE"
    )
    # The --section.field flags as typed (dotted key -> raw value), in command-line order.
    settings: dict[str, str] = field(default_factory=dict, metadata={"cli": False})
    # The whole command line, to relaunch the command (torchrun) or to record it (reports).
    argv: list[str] = field(default_factory=list, metadata={"cli": False})


def resolve_config(opts: ConfigOptions, base: RunConfig | None = None) -> RunConfig:
    """preset (or `base`, unless a preset is named) → config file → flags; then every check.

    A layer that names a budget limit (``--train.max-*``) replaces the budget below it. With
    ``--init-from`` the preset is `finetune` unless one is named, and the pretrained directory
    decides the architecture and the tokenizer (`steplab.hf.pretrained.apply`)."""
    from steplab.presets import get_preset

    default = "finetune" if opts.settings.get("train.init_from") else "default"
    cfg = base if (base is not None and not opts.preset) else get_preset(opts.preset or default)
    if opts.config:
        cfg = load_toml(opts.config, base=cfg)
        if opts.preset:
            cfg.preset = opts.preset
    if any(key in (f"train.{b}" for b in BUDGET) for key in opts.settings):
        clear_budget(cfg)
    for key, value in opts.settings.items():
        section, _, name = key.partition(".")  # `tokenizer` alone: the section's shorthand
        set_value(cfg, key, value, where=flag(section if name else None, name or section))
    if cfg.train.init_from:
        _apply_pretrained(opts, cfg)
    from steplab.loop.session import check

    return check(cfg)


def _apply_pretrained(opts: ConfigOptions, cfg: RunConfig) -> None:
    """The pretrained model's architecture and tokenizer; a flag that would change its shape is an error."""
    from steplab.hf.pretrained import ARCH_FIELDS, apply

    for name in ARCH_FIELDS:
        if f"model.{name}" in opts.settings:
            raise ConfigError(
                f"{flag('model', name)}: the architecture comes from --init-from's config.json; drop the "
                "flag (--model.block-size, --model.dropout and --model.attention may be set)"
            )
    apply(cfg)


# --- fields → flags --------------------------------------------------------------------------


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_of(cls: type, name: str) -> Any:
    """The resolved type of field `name` of `cls` (cached: the parser asks for every field)."""
    return _hints(cls)[name]


def cli_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]


def list_item(tp: Any) -> Any:
    """The element type of ``list[X]`` (None for anything else)."""
    return typing.get_args(tp)[0] if typing.get_origin(tp) is list else None


def option_flag(f: dataclasses.Field) -> str:
    return str(f.metadata.get("flag") or flag(None, f.name))


def metavar(tp: Any, f: dataclasses.Field | None = None) -> str:
    """INT, FLOAT|none, latest|best: the type as the help shows it."""
    if f is not None and "metavar" in f.metadata:
        return str(f.metadata["metavar"])
    while list_item(tp) is not None:
        tp = list_item(tp)
    names = {"int": "INT", "float": "FLOAT", "str": "STR", "bool": "BOOL"}
    return "|".join(names.get(p, p) for p in describe(tp).split(" or "))


def type_name(tp: Any) -> str:
    """``int or none``, ``list[int]``: the type as the CLI surface records it."""
    item = list_item(tp)
    return f"list[{type_name(item)}]" if item is not None else describe(tp)


def bounds(f: dataclasses.Field) -> str:
    """The field's range as text: ``> 0``, ``>= 1``, ``in [0, 1)`` ('' when unbounded)."""
    md = f.metadata
    lo = ("(", md["gt"]) if "gt" in md else ("[", md["ge"]) if "ge" in md else None
    hi = (")", md["lt"]) if "lt" in md else ("]", md["le"]) if "le" in md else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]:g}, {hi[1]:g}{hi[0]}"
    if lo:
        return f"{'>' if lo[0] == '(' else '>='} {lo[1]:g}"
    if hi:
        return f"{'<' if hi[0] == ')' else '<='} {hi[1]:g}"
    return ""


def shown(value: Any) -> str:
    """A default as a user would type it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return " ".join(shown(v) for v in value) or "[]"
    text = str(value)
    return text if text and text.isprintable() and " " not in text else repr(text)


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def help_line(f: dataclasses.Field, value: Any, label: str = "default") -> str:
    """The field's help, then its range and the value used when the flag is not given.

    A none default is not repeated when the help already says what none means."""
    text = str(f.metadata.get("help", ""))
    notes = [bounds(f)] if bounds(f) else []
    if value is not dataclasses.MISSING and not (value is None and "(none:" in text):
        notes.append(f"{label}: {shown(value)}")
    return (text + (f" ({'; '.join(notes)})" if notes else "")).replace("%", "%%")


def add_fields(group: Any, cls: type, names: set[str] | None = None) -> None:
    """One argument per field of `cls` (or of its fields in `names`); values stay raw strings."""
    for f in cli_fields(cls):
        if names is not None and f.name not in names:
            continue
        tp, default = type_of(cls, f.name), default_of(f)
        meta = metavar(tp, f).removesuffix("|none")  # an unset option is simply not given
        unshown = tp is bool or default in (None, "", [])
        help_text = help_line(f, dataclasses.MISSING if unshown else default)
        kwargs: dict[str, Any] = {"dest": f"opt:{f.name}", "default": argparse.SUPPRESS}
        if f.metadata.get("positional"):
            nargs = "*" if list_item(tp) is not None else "?"
            also = f" (or {option_flag(f)} {meta})"
            group.add_argument(
                f"pos:{f.name}", nargs=nargs, metavar=meta, help=help_text + also, default=None
            )
            kwargs["help"] = argparse.SUPPRESS
        else:
            kwargs["help"] = help_text
        if tp is bool:
            assert default is False, f"{cls.__name__}.{f.name}: a switch defaults to false"
            group.add_argument(option_flag(f), action="store_const", const="true", **kwargs)
        elif list_item(tp) is not None:
            action = "append" if list_item(list_item(tp)) is not None else "extend"
            group.add_argument(option_flag(f), action=action, nargs="+", metavar=meta, **kwargs)
        else:
            group.add_argument(option_flag(f), metavar=meta, **kwargs)


# --- flags → fields --------------------------------------------------------------------------


def _raw(ns: argparse.Namespace, f: dataclasses.Field, tp: Any) -> Any:
    """What the command line gave for `f` (MISSING when nothing)."""
    given = getattr(ns, f"opt:{f.name}", dataclasses.MISSING)
    if not f.metadata.get("positional"):
        return given
    pos = getattr(ns, f"pos:{f.name}", None)
    if list_item(tp) is not None:
        values = [*(pos or []), *([] if given is dataclasses.MISSING else given)]
        return values or dataclasses.MISSING
    if pos is not None and given is not dataclasses.MISSING:
        raise ConfigError(f"{metavar(tp, f)} is given twice (positionally and as {option_flag(f)})")
    return given if pos is None else pos


def convert(f: dataclasses.Field, tp: Any, raw: Any, where: str) -> Any:
    """A raw command-line value (a string, or a list of them) as a checked value of type `tp`."""
    item = list_item(tp)
    if item is None:
        value = coerce(tp, raw, where)
        check_value(f, value, where)
        return value
    if list_item(item) is not None:
        return [convert(f, item, r, where) for r in raw]
    numeric = item in (int, float)
    pieces = [p for r in raw for p in (r.split(",") if numeric else [r]) if p.strip()]
    return [convert(f, item, p, where) for p in pieces]


def read_fields(cls: type, ns: argparse.Namespace, prog: str) -> Any:
    """Build `cls` from the parsed command line: typed, range-checked, required fields present."""
    kwargs: dict[str, Any] = {}
    for f in cli_fields(cls):
        tp = type_of(cls, f.name)
        raw = _raw(ns, f, tp)
        if raw is dataclasses.MISSING:
            if default_of(f) is dataclasses.MISSING:
                name = metavar(tp, f) if f.metadata.get("positional") else option_flag(f)
                raise ConfigError(f"{prog} needs {name} ({f.metadata.get('help', '')})")
            continue
        where = metavar(tp, f) if f.metadata.get("positional") else option_flag(f)
        kwargs[f.name] = convert(f, tp, raw, where)
    return cls(**kwargs)
