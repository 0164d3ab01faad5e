"""The run directory: the one reader and writer of its files.

A run directory holds ``run.json`` (versions, hardware, seed, status, the writing process;
written first, it marks the directory as a steplab run), ``config.toml`` (the resolved
config), ``metrics.jsonl`` (one record per logged step, evaluation and guard event),
``summary.json`` (how the run ended), ``tokenizer.json``, ``checkpoints/``
(`steplab.checkpoint`) and, while a process writes, its lock (`steplab.locks`).

`RunDir` is the writer: `open` checks the directory (an earlier run is kept unless the user
asked to resume or overwrite it; a folder that is not a steplab run is never written into)
and locks it, `prepare` clears an overwritten run (only the files steplab writes), and every
JSON/TOML file is replaced atomically. `read_run` (`steplab.runfiles`) reads a run back for
reports and tools and survives damage: a torn, non-UTF-8 or malformed metrics line is
skipped with a warning, a field of the wrong type is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePath
from typing import Any

from steplab.atomic import io_error, leftovers, remove_leftovers, write_file
from steplab.errors import SteplabError
from steplab.locks import LOCK_NAME, Lock, dir_lock, process_alive, process_identity
from steplab.runfiles import (
    MARKERS,
    RunFiles,
    finite_number,
    is_run,
    json_number,
    read_json,
    read_metrics,
    read_number,
    read_run,
    read_toml,
)

FORMAT = "steplab-run"  # run.json's "format": this directory was made by steplab train
OWN_FILES = ("checkpoints", "metrics.jsonl", "tb", "summary.json", "run.json")  # what --overwrite removes
OWN_PATTERNS = ("events.out.tfevents.*.steplab",)  # TensorBoard events (steplab.trackers), and no others
ATOMIC_FILES = ("run.json", "config.toml", "tokenizer.json", "summary.json")  # replaced whole when written

# Reading lives in steplab.runfiles and liveness in steplab.locks; both importable from here.
__all__ = [
    "MARKERS",
    "RunDir",
    "RunFiles",
    "check_run_dir",
    "count_records",
    "enclosing_run",
    "finite_number",
    "is_run",
    "is_steplab_run",
    "json_number",
    "locked_run",
    "named_run_dir",
    "prepare_run_dir",
    "process_alive",
    "process_identity",
    "read_json",
    "read_metrics",
    "read_number",
    "read_run",
    "read_toml",
    "truncate_metrics",
    "truncate_records",
]


def count_records(path: Path) -> int:
    """Complete lines in a metrics.jsonl (what a checkpoint remembers, to cut back to on resume)."""
    p = Path(path)
    return p.read_bytes().count(b"\n") if p.exists() else 0


def truncate_records(path: Path, n: int, *, keep_events: bool = False) -> None:
    """Keep the first `n` records (and, with `keep_events`, every later ``event`` record)."""
    p = Path(path)
    if not p.exists():
        return
    lines = p.read_bytes().split(b"\n")[:-1]  # a torn last line (a killed run) goes too
    later = [line for line in lines[n:] if keep_events and b'"event"' in line and _is_event(line)]
    _rewrite_in_place(p, b"".join(line + b"\n" for line in lines[:n] + later))


def truncate_metrics(path: Path, step: int) -> None:
    """Drop records past `step` (a resumed run will log them again)."""
    p = Path(path)
    if not p.exists():
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the damaged lines go; they were reported when read
        keep = [json.dumps(r) for r in read_metrics(p) if r.get("step", 0) <= step]
    _rewrite_in_place(p, "".join(k + "\n" for k in keep).encode())


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """Same file, new contents: the loop's metrics log may hold it open for appending (a
    rollback cuts it back mid-run), so it is not replaced by a new file as others are."""
    with open(path, "r+b") as fh:
        fh.write(data)
        fh.truncate()
        fh.flush()
        os.fsync(fh.fileno())


def _is_event(line: bytes) -> bool:
    try:
        return "event" in json.loads(line)
    except (ValueError, TypeError):
        return False


def is_steplab_run(path: str | Path) -> bool:
    """Whether `path` was made by steplab: its run.json says so (or names the writing process,
    as runs made before the marker do), it is a `steplab auto` directory (its auto.json), or
    it holds a checkpoint with its manifest."""
    path = Path(path)
    info = read_json(path / "run.json")
    if info.get("format") == FORMAT or {"status", "pid"} <= info.keys():
        return True
    if {"budget", "decisions", "version"} <= read_json(path / "auto.json").keys():
        return True  # a `steplab auto` directory: its final run trains there
    return any((c / "manifest.json").is_file() for c in (path / "checkpoints").glob("step_*"))


def enclosing_run(path: str | Path) -> Path | None:
    """The steplab run that `path` is or lies inside (the nearest), or None."""
    p = Path(path).resolve()
    return next((d for d in (p, *p.parents) if is_steplab_run(d)), None)


@contextlib.contextmanager
def locked_run(run: Path | None) -> Iterator[None]:
    """Hold run `run`'s lock for the block (nothing when `run` is None)."""
    if run is None:
        yield
        return
    with dir_lock(run, what="run directory"):
        yield


# --- names and checks ----------------------------------------------------------------------


def named_run_dir(root: str | Path, name: str, *, flag: str = "--name") -> Path:
    """`root/name`, refusing a name that leaves `root` (absolute, ``..``, empty)."""
    parts = PurePath(name).parts
    if not parts or PurePath(name).is_absolute() or ".." in parts or name.startswith("~"):
        raise SteplabError(
            f"{flag} {name!r} must be a relative name inside {root}/ (no '..', no absolute path); "
            "use --run-dir for another location"
        )
    return Path(root) / name


def _foreign_entries(run_dir: Path) -> list[str]:
    """What a directory holds besides steplab's own lock and the temporaries of its atomic writes."""
    ours = {LOCK_NAME} | {t.name for name in ATOMIC_FILES for t in leftovers(run_dir, name)}
    return sorted(p.name for p in run_dir.iterdir() if p.name not in ours)


def check_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse to clobber an earlier run or a user's folder (touches nothing)."""
    run_dir = Path(run_dir)
    if resume and overwrite:
        raise SteplabError("--resume and --overwrite contradict each other: pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise SteplabError(f"--run-dir {run_dir} is a file, not a directory")
    if not run_dir.exists():
        return
    try:
        foreign = _foreign_entries(run_dir)
    except OSError as e:
        raise io_error("read run directory", run_dir, e) or SteplabError(str(e)) from None
    if foreign and not is_steplab_run(run_dir):
        shown = ", ".join(foreign[:4]) + (", ..." if len(foreign) > 4 else "")
        raise SteplabError(
            f"--run-dir {run_dir} is not empty and is not a steplab run (it holds {shown}); "
            "steplab writes only into a new or empty directory or its own run: choose another --run-dir"
        )
    has_run = (run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()
    if has_run and not resume and not overwrite:
        raise SteplabError(
            f"run directory {run_dir} already holds a run; pass --resume to continue it, "
            "--overwrite to replace it, or choose another --run-dir"
        )


# --- the writer ----------------------------------------------------------------------------


class RunDir:
    """The files of one run directory, written by the training loop (rank 0 only).

    `open` locks the directory for this process (released by `close`, or by the kernel when
    the process dies); the other methods write its files atomically.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock: Lock | None = None
        self.created = False

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse to clobber an earlier run unless told to resume it or start over (touches nothing)."""
        check_run_dir(self.path, resume=resume, overwrite=overwrite)

    def open(self, *, resume: bool, overwrite: bool) -> RunDir:
        """`check`, then create the directory if missing and lock it; nothing else is touched."""
        self.check(resume=resume, overwrite=overwrite)
        self.created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.lock = dir_lock(self.path, what="run directory").acquire()
        except OSError as e:
            self.close()
            raise io_error("create run directory", self.path, e) or SteplabError(str(e)) from None
        except BaseException:
            self.close()
            raise
        self.check(resume=resume, overwrite=overwrite)  # again: another writer may have finished meanwhile
        return self

    def close(self) -> None:
        """Release the lock; a directory this process created and never wrote into goes again."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created and self.path.is_dir() and not _foreign_entries(self.path):
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink(missing_ok=True)
                self.path.rmdir()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def prepare(self, *, resume: bool, overwrite: bool) -> None:
        """Clear an overwritten run (steplab's own files only) and mark the directory as a run."""
        self.check(resume=resume, overwrite=overwrite)
        if overwrite and self.path.exists() and is_steplab_run(self.path):
            for p in [self.path / f for f in OWN_FILES] + [
                q for g in OWN_PATTERNS for q in self.path.glob(g)
            ]:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                elif p.exists() or p.is_symlink():
                    p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        for name in ATOMIC_FILES:  # what a killed write of these left (never another file)
            remove_leftovers(self.path, name)
        self.update_info(format=FORMAT, **({} if resume else {"status": "starting"}))

    def write_config(self, toml_text: str) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_file(self.path / "config.toml", toml_text)

    def write_tokenizer(self, tokenizer_json: dict[str, Any]) -> None:
        write_file(self.path / "tokenizer.json", json.dumps(tokenizer_json))

    def read_info(self) -> dict[str, Any]:
        return read_json(self.path / "run.json")

    def update_info(self, **fields: Any) -> None:
        """Merge `fields` into run.json (created with its start time on the first call)."""
        path = self.path / "run.json"
        info = read_json(path)
        if "started" not in info:
            info["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        info.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"), **process_identity())
        info.setdefault("format", FORMAT)
        write_file(path, json.dumps(info, indent=1, default=str))

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_file(self.path / "summary.json", json.dumps(summary, indent=1))


def prepare_run_dir(run_dir: Path, *, resume: bool, overwrite: bool) -> None:
    """`check_run_dir`, then clear the old run when overwriting and create the directory."""
    RunDir(run_dir).prepare(resume=resume, overwrite=overwrite)
