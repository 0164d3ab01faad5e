"""The run directory: the one reader and writer of its files.

A run directory holds ``config.toml`` (the resolved config), ``run.json`` (versions,
hardware, seed, status, the writing process), ``metrics.jsonl`` (one record per logged step,
evaluation and guard event), ``summary.json`` (how the run ended), ``tokenizer.json`` and
``checkpoints/`` (`steplab.checkpoint`). `RunDir` is the writer the loop uses; the
functions below read the files back for resume, reports and tools.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError


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


# --- the writer ---------------------------------------------------------------------------

OWN_FILES = ("checkpoints", "metrics.jsonl", "tb", "summary.json", "run.json")  # what --overwrite replaces
OWN_PATTERNS = ("events.out.tfevents.*.steplab",)  # TensorBoard events (steplab.trackers), and no others


class RunDir:
    """The files of one run directory, written by the training loop (rank 0 only)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber an earlier run unless told to resume it or start over (touches nothing)."""
        check_run_dir(self.path, resume=resume, overwrite=overwrite)

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        prepare_run_dir(self.path, resume=resume, overwrite=overwrite)

    def write_config(self, toml_text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / "config.toml").write_text(toml_text)

    def write_tokenizer(self, tokenizer_json: dict[str, Any]) -> None:
        (self.path / "tokenizer.json").write_text(json.dumps(tokenizer_json))

    def read_info(self) -> dict[str, Any]:
        return read_json(self.path / "run.json")

    def update_info(self, **fields: Any) -> None:
        """Merge `fields` into run.json (created with its start time on the first call)."""
        path = self.path / "run.json"
        info = read_json(path)
        if "started" not in info:
            info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        info.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **process_identity())
        path.write_text(json.dumps(info, indent=1, default=str))

    def write_summary(self, summary: dict[str, Any]) -> None:
        (self.path / "summary.json").write_text(json.dumps(summary, indent=1))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless told to resume it or start over (touches nothing)."""
    run_dir = Path(run_dir)
    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if has_run and not resume and not overwrite:
        raise SteplabError(
            f"run directory {run_dir} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --run-dir"
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise SteplabError(f"--run-dir {run_dir} is a file, not a directory")


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """`check_run_dir`, then clear the old run when overwriting and create the directory."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if overwrite and not resume and run_dir.exists():
        for child in OWN_FILES:
            p = run_dir / child
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
        for pattern in OWN_PATTERNS:
            for p in run_dir.glob(pattern):
                p.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
