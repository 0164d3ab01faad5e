"""Which process writes where: exclusive directory locks, and whether a process still lives.

A writer (``train``, ``export`` into a run, a tune trial, ``compare``'s runs, the token cache
being built) holds an exclusive `flock` on a ``.steplab.lock`` file for as long as it
writes. The kernel releases the lock when the process ends however it ends (kill -9, out of
memory), so a lock file left by a dead process is simply free: the next writer takes it over.
A holder that ends normally removes the file.
The file also records the holder (pid, host, start time, command), so a second writer is
told who holds it. flock is advisory and local: it does not protect a directory shared by
two machines over NFS.

`process_alive` tells a live process from a dead one by pid *and* start time (a pid can be
reused): `steplab runs` uses it to show a killed run as interrupted, `tune` to retry the
trials of dead workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError

LOCK_NAME = ".steplab.lock"

# --- is the process alive? -----------------------------------------------------------------


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def process_identity() -> dict[str, Any]:
    """pid, host and start time of this process (written into run.json and lock files)."""
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "pid_start": process_start(pid)}


def process_alive(info: dict[str, Any]) -> bool | None:
    """Whether the process `info` describes (pid, host, pid_start) still runs.

    None when this machine cannot tell (another host, no pid recorded).
    """
    pid, host = info.get("pid"), info.get("host")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)  # signal 0: an existence check, nothing is sent
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    start = info.get("pid_start")
    now = process_start(pid)
    reused = start is not None and now is not None and now != start  # a later process got the pid
    return not reused


# --- the lock ------------------------------------------------------------------------------


class LockedError(SteplabError):
    """Another live process holds the lock."""


def holder_text(path: Path) -> str:
    """Who holds the lock at `path`, as a phrase: 'pid 123 on host (steplab train ..., since ...)'."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int):
        return "another process"
    parts = [f"pid {info['pid']}" + (f" on {info['host']}" if info.get("host") else "")]
    details = [d for d in (info.get("command"), f"since {info['since']}" if info.get("since") else None) if d]
    return parts[0] + (f" ({', '.join(details)})" if details else "")


class Lock:
    """An exclusive lock on `file` (created if missing), held until `release`.

    `what` names what it guards in messages: "run directory runs/x".
    """

    def __init__(self, file: str | Path, *, what: str):
        self.file = Path(file)
        self.what = what
        self.fd: int | None = None

    def acquire(self, *, wait: bool = False) -> Lock:
        """Take the lock; `LockedError` naming the holder when another process has it (unless `wait`)."""
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not _flock(fd, blocking=False):
                    if not wait:
                        raise LockedError(
                            f"{self.what} is in use by {holder_text(self.file)}; "
                            "wait for it to finish or stop it, then try again"
                        )
                    sys.stderr.write(
                        f"waiting for {holder_text(self.file)}, which is writing {self.what} ...\n"
                    )
                    _flock(fd, blocking=True)
                if _same_file(fd, self.file):  # not removed by the previous holder meanwhile
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        self.fd = fd
        _write_holder(fd)
        return self

    def release(self) -> None:
        """Remove the lock file, then unlock: a process waiting on the old file sees it is gone
        and takes a new one, so the file never outlives its holder (unless the holder is killed)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                if _same_file(self.fd, self.file):
                    self.file.unlink()
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> Lock:
        return self.acquire() if self.fd is None else self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _flock(fd: int, *, blocking: bool) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        return False
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _write_holder(fd: int) -> None:
    """Record this process in the lock file (for the message a second writer gets)."""
    info = {
        **process_identity(),
        "command": " ".join(["steplab", *sys.argv[1:]])[:200] if sys.argv else None,
        "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with contextlib.suppress(OSError):  # the message is a courtesy; the flock is the lock
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)


def dir_lock(path: str | Path, *, what: str = "directory") -> Lock:
    """The lock of directory `path` (its ``.steplab.lock``); `what` as in "run directory"."""
    return Lock(Path(path) / LOCK_NAME, what=f"{what} {path}")


@contextlib.contextmanager
def locked(file: str | Path, *, what: str, wait: bool = False) -> Iterator[Lock]:
    """`with locked(file, what=...):` this process holds the lock until the block ends."""
    lock = Lock(file, what=what)
    lock.acquire(wait=wait)
    try:
        yield lock
    finally:
        lock.release()
