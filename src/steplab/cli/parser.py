"""The `steplab` parser, generated: each command from its options dataclass, and the flags of
every config section it reads from `steplab.config`.

The help shows what a run will use: a config flag's default is the preset's value (the
`default` preset, or the one named by ``--preset`` before ``--help``), with its range. A
mistake is one line: an unknown flag or command names the closest known one (``did you mean
--optim.lr?``), a flag of a section the command does not read says so, and a renamed flag
gives its new spelling.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from steplab.cli.options import (
    Command,
    ConfigOptions,
    add_fields,
    bounds,
    cli_fields,
    default_of,
    help_line,
    list_item,
    metavar,
    option_flag,
    read_fields,
    shown,
    type_name,
    type_of,
)
from steplab.config import SECTIONS, SHORTHANDS, RunConfig, did_you_mean, flag
from steplab.errors import ConfigError

COMMAND_DEST = "steplab_command"
CONFIG_DEST = "cfg:"  # dest prefix of the --section.field flags
ALIASES = {"train.init_from": "--init-from"}  # config fields that also have a short top-level flag

# Flags that were renamed: the error gives the new spelling.
RENAMED = {
    "--budget-steps": "--train.max-steps",
    "--budget-tokens": "--train.max-tokens",
    "--budget-seconds": "--train.max-seconds",
    "--redact": "--data.redact",
}

CONFIG_HELP = "Settings apply in the order preset, --config FILE, flags."
BUDGET_HELP = (
    " A budget flag (--train.max-steps, --train.max-tokens, --train.max-seconds) replaces the "
    "preset's budget; several stop at the first reached."
)


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one `SteplabError` line (no usage dump), with a hint."""

    def error(self, message: str) -> NoReturn:
        see = f"see `{self.prog} --help`"
        m = re.match(r"argument \S+: invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            hint = did_you_mean(m.group(1), re.findall(r"'([^']*)'", m.group(2)))
            raise ConfigError(f"{self.prog}: unknown command {m.group(1)!r} ({hint}{see})")
        raise ConfigError(f"{self.prog}: {message} ({see})")


class HelpFormatter(argparse.HelpFormatter):
    """Aliases on one line (``--data.path, --data STR|none``), at most 100 columns."""

    def __init__(self, prog: str) -> None:
        width = min(shutil.get_terminal_size().columns, 100) - 2
        super().__init__(prog, max_help_position=32, width=width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        """Paragraphs stay paragraphs (argparse would run a docstring's into one)."""
        fill = super()._fill_text
        return "\n\n".join(fill(p, width, indent) for p in text.split("\n\n"))

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        args = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {args}"


def version() -> str:
    """`steplab --version`: ours, torch's (read from its metadata: torch is not imported) and Python's."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from steplab import __version__

    try:
        torch = installed("torch")
    except PackageNotFoundError:
        torch = "not installed"
    return f"steplab {__version__} (torch {torch}, python {platform.python_version()})"


# --- building --------------------------------------------------------------------------------


def usage(c: Command) -> str:
    parts = [f"steplab {c.name}"]
    for f in cli_fields(c.options):
        if f.metadata.get("positional"):
            tp = type_of(c.options, f.name)
            m = metavar(tp, f)
            item = f"{m} [{m} ...]" if list_item(tp) is not None else m
            parts.append(item if default_of(f) is dataclasses.MISSING else f"[{item}]")
    parts.append("[options]")
    if c.sections:
        parts.append("[--preset NAME] [--config FILE] [--SECTION.FIELD VALUE ...]")
    return " ".join(parts)


def add_section(p: argparse.ArgumentParser, section: str, values: RunConfig, label: str) -> None:
    """The flags of one config section, under a one-line heading; defaults from `values`."""
    cls = SECTIONS[section]
    doc = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")
    g = p.add_argument_group(f"[{section}] {doc[:1].lower() + doc[1:]}")
    if section == "tokenizer":  # its own dest: `set_value` reads `--tokenizer PATH` as a tokenizer file
        g.add_argument(
            "--tokenizer",
            dest=f"{CONFIG_DEST}tokenizer",
            default=argparse.SUPPRESS,
            metavar="KIND|PATH",
            help="short for --tokenizer.kind, or a tokenizer.json path "
            "(--tokenizer.kind pretrained --tokenizer.path)",
        )
    for f in dataclasses.fields(cls):
        tp = type_of(cls, f.name)
        key = f"{section}.{f.name}"
        names = [flag(section, f.name), *([ALIASES[key]] if key in ALIASES else [])]
        if SHORTHANDS.get(section) == f.name and section != "tokenizer":
            names.append(f"--{section}")
        kwargs: dict[str, Any] = {"dest": f"{CONFIG_DEST}{section}.{f.name}", "default": argparse.SUPPRESS}
        if tp is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        else:
            kwargs["metavar"] = metavar(tp)
        g.add_argument(*names, help=help_line(f, getattr(getattr(values, section), f.name), label), **kwargs)
        if "_" in f.name:  # --optim.weight_decay, as in the TOML file; not listed in the help
            g.add_argument(f"--{section}.{f.name}", help=argparse.SUPPRESS, **kwargs)


def add_command(p: argparse.ArgumentParser, c: Command, values: RunConfig, label: str) -> None:
    p.set_defaults(**{COMMAND_DEST: c.name})
    own = {f.name for f in cli_fields(c.options)}
    if issubclass(c.options, ConfigOptions):
        own -= {f.name for f in cli_fields(ConfigOptions)}
    add_fields(p, c.options, own)
    if c.sections:
        about = CONFIG_HELP + (BUDGET_HELP if "train" in c.sections else "")
        add_fields(p.add_argument_group("config", about), ConfigOptions)
        for section in SECTIONS:
            if section in c.sections:
                add_section(p, section, values, label)


def build(
    commands: Sequence[Command], groups: dict[str, str], values: RunConfig, label: str
) -> tuple[Parser, dict[str, Parser]]:
    """The top-level parser and each command's parser (by command name)."""
    top = Parser(
        prog="steplab",
        description="Train, tune, compare and guard GPT-style language models.",
        epilog="`steplab COMMAND --help` lists a command's flags.",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    top.add_argument("--version", action="version", version=version())
    sub = top.add_subparsers(metavar="COMMAND", parser_class=Parser)
    nested: dict[str, Any] = {}
    parsers: dict[str, Parser] = {}
    for c in commands:
        group, _, name = c.name.rpartition(" ")
        where = sub
        if group:
            if group not in nested:
                g = sub.add_parser(
                    group, help=groups[group], formatter_class=HelpFormatter, allow_abbrev=False
                )
                nested[group] = g.add_subparsers(metavar="SUBCOMMAND", parser_class=Parser, required=True)
            where = nested[group]
        p = where.add_parser(
            name,
            help=c.summary,
            description=c.description,
            usage=usage(c),
            formatter_class=HelpFormatter,
            allow_abbrev=False,
        )
        add_command(p, c, values, label)
        parsers[c.name] = p
    return top, parsers


def preset_for_help(argv: Sequence[str]) -> tuple[RunConfig, str]:
    """The config whose values the help shows: ``--preset NAME`` if given (and known), else default."""
    from steplab.presets import PRESETS

    name = "default"
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            name = argv[i + 1]
        elif a.startswith("--preset="):
            name = a.partition("=")[2]
    name = name if name in PRESETS else "default"
    return PRESETS[name](), f"preset {name}"


# --- parsing ---------------------------------------------------------------------------------


@dataclass
class Parsed:
    command: Command | None  # None: no command given
    options: Any
    parser: Parser


def parse(argv: Sequence[str], commands: Sequence[Command], groups: dict[str, str]) -> Parsed:
    """The command and its typed options; a mistake raises `ConfigError` (one line)."""
    top, parsers = build(commands, groups, *preset_for_help(argv))
    ns, extra = top.parse_known_args(list(argv))
    name = getattr(ns, COMMAND_DEST, None)
    if name is None:
        return Parsed(None, None, top)
    command = next(c for c in commands if c.name == name)
    prog = parsers[name].prog
    if extra:
        raise unknown_argument(command, prog, extra[0])
    opts = read_fields(command.options, ns, prog)
    if isinstance(opts, ConfigOptions):
        opts.settings = {k[len(CONFIG_DEST) :]: v for k, v in vars(ns).items() if k.startswith(CONFIG_DEST)}
        opts.argv = list(argv)
    return Parsed(command, opts, top)


def known_flags(c: Command) -> list[str]:
    """Every flag `c` takes, in its canonical spelling."""
    out = [option_flag(f) for f in cli_fields(c.options)]
    for section in c.sections:
        out += [flag(section, f.name) for f in dataclasses.fields(SECTIONS[section])]
        out += [f"--{section}"] if section in SHORTHANDS else []
        out += [a for key, a in ALIASES.items() if key.startswith(section + ".")]
    return [*out, "--help"]


def unknown_argument(c: Command, prog: str, token: str) -> ConfigError:
    """The one-line error for an argument the command does not take, with what to type instead."""
    see = f"see `{prog} --help`"
    if not token.startswith("-") or token == "-":
        return ConfigError(f"{prog}: unexpected argument {token!r} ({see})")
    name = token.partition("=")[0]
    if name in RENAMED:
        return ConfigError(f"{prog}: {name} is now {RENAMED[name]} ({see})")
    section = name[2:].partition(".")[0]
    if section in SECTIONS and section not in c.sections:
        reads = f"it reads {', '.join(c.sections)}" if c.sections else "it reads no config"
        return ConfigError(f"{prog} does not use the {section} settings ({name}; {reads})")
    return ConfigError(f"{prog}: unknown flag {name} ({did_you_mean(name, known_flags(c))}{see})")


# --- the committed surface -------------------------------------------------------------------


def surface(commands: Sequence[Command]) -> str:
    """Every command and flag with its type, default and range: `tests/cli_surface.txt`."""
    lines = []
    for c in commands:
        lines.append(f"steplab {c.name}" + (f"  [config: {' '.join(c.sections)}]" if c.sections else ""))
        for f in cli_fields(c.options):
            tp = type_of(c.options, f.name)
            name = option_flag(f)
            if f.metadata.get("positional"):
                name = f"{metavar(tp, f)} | {name}"
            default = default_of(f)
            value = "required" if default is dataclasses.MISSING else f"default {shown(default)}"
            lines.append(f"  {name:22} {type_name(tp):24} {value:24} {bounds(f)}".rstrip())
    lines.append("config flags (a command takes those of the sections in its [config: ...])")
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            tp = type_of(cls, f.name)
            alias = f", --{section}" if SHORTHANDS.get(section) == f.name else ""
            alias += f", {ALIASES[f'{section}.{f.name}']}" if f"{section}.{f.name}" in ALIASES else ""
            lines.append(f"  {flag(section, f.name) + alias:36} {type_name(tp):36} {bounds(f)}".rstrip())
    return "\n".join(lines) + "\n"
