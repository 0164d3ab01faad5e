"""Real file-system faults for tests: a small tmpfs, a read-only bind mount, a full disk.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted the tests that need it skip.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _run(*cmd: str) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` (e.g. "2m") mounted at `path` for the block; skips where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield path
    finally:
        _run("umount", "-l", str(path))


@contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` bind-mounted onto itself read-only for the block (root ignores chmod; a mount it cannot)."""
    if os.geteuid() != 0 or not _run("mount", "--bind", str(path), str(path)):
        pytest.skip("bind mounts are not permitted here")
    try:
        if not _run("mount", "-o", "remount,bind,ro", str(path)):
            pytest.skip("read-only remounts are not permitted here")
        yield path
    finally:
        _run("umount", "-l", str(path))


def fill(fs: Path, *, leave: int = 0) -> Path:
    """Fill the file system holding `fs` until about `leave` bytes are free; returns the filler file."""
    filler = fs / "filler.bin"
    chunk = b"\0" * (1 << 16)
    with open(filler, "wb", buffering=0) as fh:  # unbuffered: nothing left to fail at close
        try:
            while True:
                fh.write(chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
