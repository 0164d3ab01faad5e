"""The `steplab` command line: every command generated from its typed options.

Each command is a `Command` (`steplab.cli.options`): an options dataclass whose fields are
its flags, a handler, and the config sections it reads, whose fields become
``--section.field`` flags (``--optim.lr 3e-3``, ``--train.max-seconds 60``; ``--data PATH``,
``--tokenizer KIND``, ``--optim NAME``, ``--schedule NAME`` are short for a section's main
field). Settings apply in the order preset → ``--config FILE`` → flags. A user mistake
prints one line and exits with code 2. Importing this module imports no torch: each handler
imports what it needs.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Any

from steplab.cli.auto import AUTO
from steplab.cli.catalog import OPTIMIZERS, PRESETS
from steplab.cli.compare import COMPARE
from steplab.cli.corpus import GROUP_HELP, PREPARE
from steplab.cli.doctor import DOCTOR
from steplab.cli.errors import debug_requested, run_command
from steplab.cli.evaluate import EVAL
from steplab.cli.export import EXPORT
from steplab.cli.mup import COORD_CHECK, TRANSFER
from steplab.cli.options import Command, resolve_config
from steplab.cli.parser import parse, surface
from steplab.cli.plot import PLOT
from steplab.cli.report import REPORT
from steplab.cli.runs import RUNS
from steplab.cli.sample import SAMPLE
from steplab.cli.train import TRAIN, resumed_config
from steplab.cli.tuning import BATCH_FIND, LR_FIND, TUNE
from steplab.config import RunConfig

# In the order `steplab --help` lists them.
COMMANDS: list[Command] = [
    TRAIN,
    SAMPLE,
    EVAL,
    PRESETS,
    OPTIMIZERS,
    RUNS,
    PLOT,
    REPORT,
    EXPORT,
    DOCTOR,
    PREPARE,
    LR_FIND,
    BATCH_FIND,
    TUNE,
    COORD_CHECK,
    TRANSFER,
    COMPARE,
    AUTO,
]
GROUPS = {"data": GROUP_HELP}


def run(command: Command, options: Any) -> int:
    """Call the command's handler, with the resolved config when it reads one."""
    if not command.sections:
        return command.handler(options)
    base = command.base(options) if command.base else None
    return command.handler(options, resolve_config(options, base))


def main(argv: Sequence[str] | None = None) -> int:
    debug, args = debug_requested(list(sys.argv[1:] if argv is None else argv))
    return run_command(
        lambda: dispatch(args), debug=debug
    )  # any failure: one line (a traceback with --debug)


def dispatch(argv: list[str]) -> int:
    """Parse `argv` and run the command it names."""
    parsed = parse(argv, COMMANDS, GROUPS)
    if parsed.command is None:
        parsed.parser.print_help()
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        return run(parsed.command, parsed.options)


def train_config(flags: Sequence[str]) -> RunConfig:
    """The config `steplab train FLAGS` would run (for scripts and benchmarks)."""
    opts = parse(["train", *flags], COMMANDS, GROUPS).options
    return resolve_config(opts, resumed_config(opts))


def cli_surface() -> str:
    """The committed CLI surface (tests/cli_surface.txt)."""
    return surface(COMMANDS)


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings (a damaged checkpoint skipped, a setting ignored) as one `warning:` line."""
    sys.stderr.write(f"warning: {message}\n")


if __name__ == "__main__":
    raise SystemExit(main())
