"""The CLI surface, frozen: every command and flag with its type, default and range.

`tests/cli_surface.txt` is committed; a change to a command's flags shows up as a diff of
that file, made on purpose. After a deliberate change, regenerate it:

    PYTHONPATH=src python tests/test_cli_surface.py --update
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from steplab.cli.main import cli_surface

SNAPSHOT = Path(__file__).with_name("cli_surface.txt")
HEADER = (
    "# steplab's command-line surface: every command and flag, its type, default and range.\n"
    "# A change here is deliberate. Regenerate: PYTHONPATH=src python tests/test_cli_surface.py --update\n"
)


def current() -> str:
    return HEADER + cli_surface()


def test_cli_surface_matches_the_committed_snapshot() -> None:
    want, got = SNAPSHOT.read_text(), current()
    diff = "".join(difflib.unified_diff(want.splitlines(True), got.splitlines(True), "committed", "now"))
    assert got == want, (
        "the CLI surface changed; if on purpose, regenerate tests/cli_surface.txt with\n"
        "    PYTHONPATH=src python tests/test_cli_surface.py --update\n" + diff
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--update"]:
        SNAPSHOT.write_text(current())
        print(f"wrote {SNAPSHOT}")
    else:
        print(current(), end="")
