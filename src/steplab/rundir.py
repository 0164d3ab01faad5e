"""The run directory: the one reader and writer of its files.

A run directory holds ``run.json`` (versions, hardware, seed, status, the writing process;
written first, it marks the directory as a steplab run), ``config.toml`` (the resolved
config), ``metrics.jsonl`` (one record per logged step, evaluation and guard event),
``summary.json`` (how the run ended), ``tokenizer.json``, ``checkpoints/``
(`steplab.checkpoint`) and, while a process writes, its lock (`steplab.locks`).

`RunDir` is the writer: `open` checks the directory (an earlier run is kept unless the user
asked to resume or overwrite it; a folder that is not a steplab run is never written into)
and locks it, `prepare` clears an overwritten run (only the files steplab writes), and every
JSON/TOML file is replaced atomically. `read_run` reads a run back for reports and tools,
and survives damage: a torn, non-UTF-8 or malformed metrics line is skipped with a warning.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import tomllib

from steplab.atomic import io_error, leftovers, remove_leftovers, write_file
from steplab.errors import SteplabError
from steplab.locks import LOCK_NAME, Lock, dir_lock, process_alive, process_identity

FORMAT = "steplab-run"  # run.json's "format": this directory was made by steplab train
MARKERS = ("run.json", "metrics.jsonl")  # a directory holding either is shown as a run
OWN_FILES = ("checkpoints", "metrics.jsonl", "tb", "summary.json", "run.json")  # what --overwrite removes
OWN_PATTERNS = ("events.out.tfevents.*.steplab",)  # TensorBoard events (steplab.trackers), and no others
ATOMIC_FILES = ("run.json", "config.toml", "tokenizer.json", "summary.json")  # replaced whole when written

__all__ = ["process_alive", "process_identity"]  # liveness lives in steplab.locks; re-exported

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


def is_steplab_run(path: str | Path) -> bool:
    """Whether `path` was made by steplab train: its run.json says so (or names the writing
    process, as runs made before the marker do), or it holds a checkpoint with its manifest."""
    path = Path(path)
    info = read_json(path / "run.json")
    if info.get("format") == FORMAT or {"status", "pid"} <= info.keys():
        return True
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
