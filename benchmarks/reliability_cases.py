"""The table of reliability cases in docs/reliability.md, regenerated from the tests themselves.

Runs every test marked ``@pytest.mark.reliability(group=..., faults=N, kills=K)`` and lists
each test function (its docstring's "Case:" line) with how many of its parameter sets held,
then the totals: cases tried and held, faults injected, SIGKILL points survived.

    PYTHONPATH=src python benchmarks/reliability_cases.py            # print the table
    PYTHONPATH=src python benchmarks/reliability_cases.py --write    # and replace it in docs/reliability.md

Real mounts need root: elsewhere those cases are skipped, and the table says so.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
GROUPS = [
    "data loss",
    "concurrency",
    "I/O fault",
    "destination",
    "damaged artefact",
    "damaged input",
    "kill -9",
    "size",
]
BEGIN, END = "<!-- cases:begin (benchmarks/reliability_cases.py) -->", "<!-- cases:end -->"


@dataclass
class Case:
    group: str
    doc: str
    where: str
    faults: int
    kills: int
    outcomes: dict[str, str] = field(default_factory=dict)  # parameter id -> passed/failed/skipped


class Collector:
    """A pytest plugin that records every reliability-marked test and its outcome."""

    def __init__(self) -> None:
        self.cases: dict[str, Case] = {}
        self.ids: dict[str, tuple[str, str]] = {}  # nodeid -> (function key, parameter id)

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        for item in items:
            mark = item.get_closest_marker("reliability")
            if mark is None:
                continue
            fn = item.function
            key = f"{item.path.name}::{fn.__name__}"
            named = fn.__name__.removeprefix("test_").replace("_", " ")
            doc = (fn.__doc__ or named).strip().splitlines()[0].removeprefix("Case: ")
            self.cases.setdefault(
                key,
                Case(
                    group=mark.kwargs.get("group", "other"),
                    doc=doc,
                    where=key,
                    faults=mark.kwargs.get("faults", 0),
                    kills=mark.kwargs.get("kills", 0),
                ),
            )
            param = item.callspec.id if hasattr(item, "callspec") else ""
            self.ids[item.nodeid] = (key, param)

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.nodeid not in self.ids:
            return
        key, param = self.ids[report.nodeid]
        outcomes = self.cases[key].outcomes
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcomes[param] = "skipped" if report.skipped else ("passed" if report.passed else "failed")


def _sentence(doc: str) -> str:
    """Capitalised, unless it starts with a name from the code (n_layer, --name, `cmd`)."""
    first = doc.split(" ", 1)[0]
    return doc if any(c in first for c in "_-`.") else doc[:1].upper() + doc[1:]


def table(cases: list[Case]) -> str:
    rows = ["| group | case | held / tried | test |", "|---|---|---|---|"]
    order = {g: i for i, g in enumerate(GROUPS)}
    for c in sorted(cases, key=lambda c: (order.get(c.group, len(GROUPS)), c.group, c.where)):
        held = sum(o == "passed" for o in c.outcomes.values())
        skipped = sum(o == "skipped" for o in c.outcomes.values())
        failed = [p or "-" for p, o in c.outcomes.items() if o == "failed"]
        note = (f"; {skipped} skipped" if skipped else "") + (
            f"; **failed: {', '.join(failed)}**" if failed else ""
        )
        rows.append(f"| {c.group} | {_sentence(c.doc)} | {held} / {len(c.outcomes)}{note} | `{c.where}` |")
    tried = sum(len(c.outcomes) for c in cases)
    held = sum(o == "passed" for c in cases for o in c.outcomes.values())
    skipped = sum(o == "skipped" for c in cases for o in c.outcomes.values())
    faults = sum(c.faults * sum(o == "passed" for o in c.outcomes.values()) for c in cases)
    kills = sum(c.kills * sum(o == "passed" for o in c.outcomes.values()) for c in cases)
    order = {g: i for i, g in enumerate(GROUPS)}
    by_group: dict[str, int] = defaultdict(int)
    for c in cases:
        by_group[c.group] += len(c.outcomes)
    summary = (
        f"**{held} of {tried} cases held**" + (f" ({skipped} skipped)" if skipped else "")
        + f"; {faults} real faults injected; {kills} SIGKILL points survived. "
        + "Cases per group: " + ", ".join(f"{g} {n}" for g, n in sorted(by_group.items(), key=lambda kv: order.get(kv[0], 99))) + "."
    )  # fmt: skip
    return summary + "\n\n" + "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--write", action="store_true", help="replace the table in docs/reliability.md")
    args = ap.parse_args()
    collector = Collector()
    code = pytest.main(
        ["-q", "-p", "no:cacheprovider", "-m", "reliability", str(ROOT / "tests")], plugins=[collector]
    )
    text = table(list(collector.cases.values()))
    print(text)
    if args.write:
        doc = DOC.read_text()
        pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.S)
        if not pattern.search(doc):
            sys.exit(f"{DOC}: no {BEGIN} ... {END} block to replace")
        DOC.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))
        print(f"wrote {DOC}")
    return int(code)


if __name__ == "__main__":
    raise SystemExit(main())
