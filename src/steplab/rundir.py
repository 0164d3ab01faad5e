"""The run directory: the one reader and writer of its files (metrics.jsonl, run.json, ...)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a killed run is ignored)."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past `step` (a resumed run will log them again)."""
    p = Path(path)
    if not p.exists():
        return
    keep = [json.dumps(r) for r in read_metrics(p) if r.get("step", 0) <= step]
    p.write_text("".join(k + "\n" for k in keep), encoding="utf-8")


def count_records(path: Path) -> int:
    """Complete lines in a metrics.jsonl (what a checkpoint remembers, to cut back to on resume)."""
    p = Path(path)
    return p.read_bytes().count(b"\n") if p.exists() else 0


def truncate_records(path: Path, n: int, *, keep_events: bool = False) -> None:
    """Keep the first `n` records (and, with `keep_events`, every later ``event`` record)."""
    p = Path(path)
    if not p.exists():
        return
    lines = p.read_text(encoding="utf-8").split("\n")[:-1]  # a torn last line (a killed run) goes too
    later = [line for line in lines[n:] if keep_events and '"event"' in line and _is_event(line)]
    p.write_text("".join(line + "\n" for line in lines[:n] + later), encoding="utf-8")


def _is_event(line: str) -> bool:
    try:
        return "event" in json.loads(line)
    except json.JSONDecodeError:
        return False


# --- is the process alive? -----------------------------------------------------------------


def _proc_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def process_identity() -> dict[str, Any]:
    """pid, host and start time of this process: written into run.json by the training loop."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_start": _proc_start(pid)}


def process_alive(info: dict[str, Any]) -> bool | None:
    """Whether the process recorded in `info` still runs: None when this machine cannot tell."""
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    start = info.get("pid_start")
    now = _proc_start(pid)
    reused = start is not None and now is not None and now != start  # a later process got the pid
    return not reused
