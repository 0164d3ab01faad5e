"""What `steplab auto` has measured and decided so far: ``auto.json`` in its run directory.

Every finished proxy run and every decision is written here as soon as it exists (an atomic
replace of the file), so a process killed anywhere resumes with `--resume` without redoing
any of them: the search continues from the first decision not yet taken.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steplab.atomic import write_file
from steplab.errors import SteplabError

VERSION = 1
STATE_FILE = "auto.json"


@dataclass
class Decision:
    """One decision, in the order taken: what was chosen, why, and the evidence."""

    name: str  # tokenizer, optimizer, size, batch, lr_check, schedule
    title: str
    choice: dict[str, Any]  # config settings, "section.field" -> value
    reason: str
    rule: str = "measured"  # measured | fallback | rule
    table: list[list[Any]] = field(default_factory=list)  # evidence rows; the first row is the header
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # reproduce it
    plot: str | None = None  # a PNG next to decisions.md
    cost: float = 0.0  # budget spent on it (seconds or FLOPs)
    seconds: float = 0.0  # wall time spent on it


@dataclass
class AutoState:
    """The contents of auto.json."""

    budget: dict[str, Any]
    data: dict[str, Any]  # the data section of the config (path, text column, ...)
    device: str = "auto"
    seed: int = 1337
    spent_seconds: float = 0.0
    spent_flops: float = 0.0
    config: str = ""  # the best config so far, as TOML
    proxies: dict[str, dict[str, Any]] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)  # throughput probes, noise scale, ...
    decisions: list[Decision] = field(default_factory=list)
    final: dict[str, Any] = field(default_factory=dict)
    version: int = VERSION

    def decision(self, name: str) -> Decision | None:
        return next((d for d in self.decisions if d.name == name), None)

    def save(self, run_dir: Path) -> None:
        """Write atomically: a kill mid-write leaves the previous state."""
        write_file(Path(run_dir) / STATE_FILE, json.dumps(asdict(self), indent=1, default=str))

    @classmethod
    def load(cls, run_dir: Path) -> AutoState:
        path = Path(run_dir) / STATE_FILE
        if not path.is_file():
            raise SteplabError(
                f"--resume: {run_dir} holds no {STATE_FILE} (not a `steplab auto` run directory)"
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != VERSION:
                raise ValueError(f"version {raw.get('version')}, expected {VERSION}")
            raw["decisions"] = [Decision(**d) for d in raw.get("decisions", [])]
            return cls(**raw)
        except (ValueError, TypeError, KeyError) as e:
            raise SteplabError(
                f"--resume: {path} is damaged ({e}); start a new run with another --run-dir"
            ) from None
