"""A run directory read back: metrics records, run.json, summary.json, config.toml.

Reports and tools read runs through `read_run`, which survives damage: an unreadable file
reads as empty, a field of the wrong type is dropped, and a metrics line that is torn, not
UTF-8, not a JSON object, or holds a step or a value of the wrong type is skipped (one
warning names how many). Non-finite numbers are stored as the strings "nan", "inf", "-inf"
(`json_number`) and read back with `read_number`/`finite_number`. The writer is
`steplab.rundir.RunDir`.
"""

from __future__ import annotations

import json
import math
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steplab.atomic import io_error
from steplab.errors import SteplabError

MARKERS = ("run.json", "metrics.jsonl")  # a directory holding either is shown as a run

# --- numbers in metrics.jsonl --------------------------------------------------------------


def json_number(x: float) -> float | str:
    """A float as metrics.jsonl stores it: non-finite values as the strings "nan", "inf", "-inf"."""
    return x if math.isfinite(x) else str(x)


def read_number(v: Any) -> float | None:
    """A stored number back as a float (non-finite ones included); None for anything else."""
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    return None


def finite_number(v: Any) -> float | None:
    """A stored number that is finite, else None (what tables and plots show)."""
    x = read_number(v)
    return x if x is not None and math.isfinite(x) else None


NUMERIC_KEYS = frozenset(
    [
        "tokens",
        "train_seconds",
        "elapsed_seconds",
        "loss",
        "val_loss",
        "val_ppl",
        "val_bpb",
        "lr",
        "grad_norm",
        "tokens_per_second",
        "step_seconds",
        "data_fraction",
        "update_ratio",
        "mfu",
        "peak_mem_mb",
        "rss_mb",
    ]
)


def _valid_record(r: Any) -> bool:
    """A metrics record readers can trust: an object, an integer step, numbers where numbers go."""
    if not isinstance(r, dict):
        return False
    step = r.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        return False
    return all(read_number(r[k]) is not None for k in NUMERIC_KEYS & r.keys() if r[k] is not None)


# --- metrics.jsonl -------------------------------------------------------------------------


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Every sound record of a metrics.jsonl.

    A torn last line (a killed run) is dropped silently; damaged lines (not UTF-8, not
    JSON, not an object, a step or a value of the wrong type) are skipped with one warning.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        warnings.warn(str(io_error("read", p, e) or e), stacklevel=2)
        return []
    lines = raw.split(b"\n")
    out, damaged = [], []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError and JSONDecodeError both
            record = None
        if _valid_record(record):
            out.append(record)
        elif i < len(lines):  # the last piece has no newline: a torn write, not damage
            damaged.append(i)
    if damaged:
        warnings.warn(
            f"{p}: skipped {len(damaged)} damaged line{'s' * (len(damaged) > 1)} (first: line {damaged[0]})",
            stacklevel=2,
        )
    return out


# --- reading a run back --------------------------------------------------------------------


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML table from `path` as plain data; {} when missing or damaged."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        return {}


@dataclass
class RunFiles:
    """One run directory's files, parsed. A missing or damaged file reads as empty."""

    path: Path
    info: dict[str, Any] = field(default_factory=dict)  # run.json
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json
    config: dict[str, Any] = field(default_factory=dict)  # config.toml, as plain TOML
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl


def is_run(path: str | Path) -> bool:
    """Whether `path` holds a run to show (its run.json or metrics.jsonl)."""
    return any((Path(path) / m).is_file() for m in MARKERS)


Number = (int, float)
# The fields readers rely on, with their types: a field of another type is dropped on reading.
INFO_TYPES: dict[str, Any] = {
    **dict.fromkeys(("status", "preset", "optimizer", "started", "updated", "host", "format"), str),
    **dict.fromkeys(("environment", "data_meta"), dict),
    **dict.fromkeys(("params", "seed", "pid", "pid_start", "flops_per_token"), Number),
}
SUMMARY_TYPES: dict[str, Any] = {
    "status": str,
    **dict.fromkeys(("step", "tokens", "best_step", "train_seconds", "best_val_loss"), Number),
    **dict.fromkeys(("val_loss", "val_ppl", "val_bpb"), Number),
}


def _typed(data: dict[str, Any], types: dict[str, Any], where: Path) -> dict[str, Any]:
    """`data` without the known fields of the wrong type (one warning names them)."""
    bad = sorted(
        k
        for k, tp in types.items()
        if data.get(k) is not None and (not isinstance(data[k], tp) or isinstance(data[k], bool))
    )
    if bad:
        warnings.warn(f"{where}: ignored damaged field{'s' * (len(bad) > 1)} {', '.join(bad)}", stacklevel=3)
    return {k: v for k, v in data.items() if k not in bad}


def read_run(path: str | Path) -> RunFiles:
    """Read a run directory; a path that holds no run is a `SteplabError`.

    Damage reads as absence: an unreadable file is empty, a field of the wrong type is
    dropped, a config section that is not a table is dropped, a bad metrics line is skipped.
    """
    p = Path(path)
    if not p.is_dir():
        raise SteplabError(f"{p}: no such run directory")
    if not is_run(p):
        raise SteplabError(f"{p}: not a steplab run directory (no run.json or metrics.jsonl)")
    config = read_toml(p / "config.toml")
    return RunFiles(
        path=p,
        info=_typed(read_json(p / "run.json"), INFO_TYPES, p / "run.json"),
        summary=_typed(read_json(p / "summary.json"), SUMMARY_TYPES, p / "summary.json"),
        config={
            k: v for k, v in config.items() if isinstance(v, dict) or (k == "preset" and isinstance(v, str))
        },
        records=read_metrics(p / "metrics.jsonl"),
    )
