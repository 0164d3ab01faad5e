"""How a failed command ends: one line on stderr and an exit code, never a traceback.

| what failed | exit | line |
|---|---|---|
| a `SteplabError` (bad input, a fault the library recognised) | 2 | its message |
| an `OSError` (full disk, read-only, permissions, ...) or a library error wrapping one | 2 | the path, the cause, what to do |
| undecodable input (not UTF-8, broken JSON) | 2 | what could not be read |
| a storage backend (Optuna, SQLAlchemy) | 2 | the backend's first line |
| a missing optional module | 2 | which module, how to install it |
| out of memory | 2 | what to make smaller |
| anything else (a bug) | 1 | the exception, and how to see the traceback |
| Ctrl-C | 130 | `interrupted` |

``--debug`` (anywhere on the command line) or ``STEPLAB_DEBUG=1`` prints the traceback as well.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable

from steplab.atomic import describe, os_error_of
from steplab.errors import SteplabError

DEBUG_FLAG = "--debug"


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """Whether --debug is on (the flag or STEPLAB_DEBUG=1), and argv without the flag.

    The flag is passed on to child processes (torchrun, tune workers) through the environment.
    """
    if DEBUG_FLAG in argv:
        os.environ["STEPLAB_DEBUG"] = "1"
        argv = [a for a in argv if a != DEBUG_FLAG]
    return os.environ.get("STEPLAB_DEBUG", "") not in ("", "0"), argv


def run_command(command: Callable[[], int], *, debug: bool) -> int:
    """Run `command`; turn whatever it raises into one line and an exit code (see the module)."""
    try:
        return command()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `steplab runs | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - every failure ends here, as one line
        message, code = explain(e)
        if debug:
            traceback.print_exc()
        elif code == 1:
            message += " (run again with --debug for the traceback, and please report it)"
        sys.stderr.write(f"error: {_one_line(message)}\n")
        return code


def explain(e: Exception) -> tuple[str, int]:
    """The line to print for `e`, and the exit code."""
    if isinstance(e, SteplabError):
        return str(e), 2
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return (
            f"out of memory ({_first_line(e)}); make the model or the batch smaller "
            "(--model.n-embd, --model.n-layer, --train.batch-size with --train.grad-accum)",
            2,
        )
    if isinstance(e, ImportError):
        name = e.name or _first_line(e)
        return (
            f"a module this command needs is not installed: {name} (install it with pip, or the steplab extra that brings it)",
            2,
        )
    if isinstance(e, UnicodeDecodeError):
        return f"cannot decode input as UTF-8 ({_first_line(e)}); re-encode the file as UTF-8", 2
    if isinstance(e, json.JSONDecodeError):
        return f"damaged JSON ({e.msg} at line {e.lineno}); fix or remove the file", 2
    io = os_error_of(e)
    if io is not None:
        where = f"{io.filename}: " if io.filename else ""
        return f"{where}{describe(io)}", 2
    if type(e).__module__.split(".")[0] in ("sqlalchemy", "optuna"):
        return f"storage: {_first_line(e)}", 2
    return f"internal error: {type(e).__name__}: {_first_line(e)}", 1


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).strip()
