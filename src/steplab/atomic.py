"""Atomic writes, what an overwrite may remove, and I/O failures said in one line.

Every file and directory steplab publishes (checkpoints, the token cache, exports, the run
directory's JSON and TOML) is written under a temporary name beside its destination,
fsynced, then renamed into place: a crash, a kill or a full disk leaves either the old
version or the new one, never half of one, and the temporary is removed on any failure.

A library that writes for us reports a full disk in its own words (torch: ``RuntimeError
[enforce fail at inline_container.cc] unexpected pos``; safetensors: ``SafetensorError ... os
error 28``; numpy: ``OSError: N requested and 0 written``). `os_error_of` turns those into an
`OSError` with its errno, and `describe` into one line that says what to do.

An overwrite removes only what steplab wrote: a directory it replaces must carry the marker
file steplab writes into every one it publishes (`check_replaceable`), and never is the
current directory, the home directory, the root, or a directory holding a run it reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError, StorageError

# --- I/O failures in one line ------------------------------------------------------------------

ADVICE = {
    errno.ENOSPC: "no space left on device (free some space, or use another disk)",
    errno.EDQUOT: "disk quota exceeded (free some space, or use another disk)",
    errno.EROFS: "read-only file system (use a writable location)",
    errno.EACCES: "permission denied (check the permissions, or use another location)",
    errno.EPERM: "operation not permitted (check the permissions, or use another location)",
    errno.ENOTDIR: "a part of the path is a file, not a directory (check the path)",
    errno.EISDIR: "is a directory, not a file (check the path)",
    errno.ENOENT: "no such file or directory (check the path)",
    errno.ENAMETOOLONG: "file name too long (use a shorter path)",
    errno.EMFILE: "too many open files (raise `ulimit -n`)",
    errno.EIO: "input/output error (check the disk)",
}


def os_error_of(exc: BaseException, where: str | Path | None = None) -> OSError | None:
    """The `OSError` behind `exc` (itself, or one a library reported as text); None if none.

    `where` is a path on the file system written to: a write failure that gives no errno is
    taken for a full disk when that file system has (almost) no space left.
    """
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc
    text = str(exc)
    m = re.search(r"os error (\d+)", text)
    if m:
        return OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(where) if where else None)
    failed_write = isinstance(exc, OSError) or any(
        s in text for s in ("inline_container", "file write failed", "requested and", "No space left")
    )
    if not failed_write:
        return None
    code = errno.ENOSPC if "No space left" in text or _nearly_full(where) else errno.EIO
    return OSError(code, os.strerror(code), str(where) if where else None)


def _nearly_full(where: str | Path | None) -> bool:
    if where is None:
        return False
    p = Path(where)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free < (1 << 20)
    except OSError:
        return False


def describe(e: OSError) -> str:
    """What went wrong, in a few words and with what to do: 'no space left on device (...)'."""
    if e.errno in ADVICE:
        return ADVICE[e.errno]
    return (e.strerror or str(e)).lower()


def io_error(action: str, path: str | Path, exc: BaseException) -> StorageError | None:
    """`StorageError('cannot ACTION PATH: what (what to do)')` for an I/O failure; None otherwise."""
    e = os_error_of(exc, path)
    if e is None:
        return None
    return StorageError(f"cannot {action} {path}: {describe(e)}")


# --- atomic writes -----------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then the directories (deepest first)."""
    dirs = []
    for dirpath, _, files in os.walk(root):
        dirs.append(Path(dirpath))
        for name in files:
            with open(Path(dirpath) / name, "rb") as fh:
                os.fsync(fh.fileno())
    for d in reversed(dirs):
        fsync_dir(d)


def write_file(path: str | Path, data: str | bytes, *, what: str = "write") -> None:
    """Write `data` to `path` atomically: a temporary sibling, fsync, rename.

    A failure leaves the previous `path` as it was, removes the temporary and raises a
    `SteplabError` naming the path and the cause.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp: Path | None = None
    try:
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except OSError as e:
        raise StorageError(f"cannot {what} {path}: {describe(os_error_of(e, path.parent) or e)}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """`with replacing(out) as tmp: fig.savefig(tmp)`: write to a temporary beside `path` (same
    suffix, so writers that choose the format by it still do), renamed onto `path` when the
    block succeeds and removed when it fails (an I/O failure becomes a `StorageError`)."""
    path = Path(path)
    tmp = path.parent / f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}"
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except Exception as e:
        err = io_error("write", path, e)
        if err is None:
            raise
        raise err from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def umask() -> int:
    """This process's umask (read from /proc where possible: setting it to read it is racy)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any, *, indent: int | None = 1) -> None:
    write_file(path, json.dumps(obj, indent=indent, default=str))


@contextlib.contextmanager
def staging_dir(final: Path, *, prefix: str | None = None) -> Iterator[Path]:
    """A temporary directory beside `final`, removed unless it was renamed into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=prefix or f".{final.name}.tmp-"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes it private; the result is an ordinary directory
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def adopted(tmp: Path) -> Iterator[Path]:
    """A temporary directory others already wrote into (every rank's shards), used as
    `staging_dir` would be: removed unless it was renamed into place."""
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_dir(
    final: Path,
    write: Callable[[Path], None],
    *,
    replace: bool = False,
    marker: str | None = None,
    what: str = "write",
) -> None:
    """Build a directory with `write(tmp)`, fsync it and rename it to `final`.

    With `marker`, a file of that name listing every file written is added last (what
    `check_replaceable` reads before a later overwrite). With `replace`, an existing `final`
    is moved aside and removed only once the new one is in place (a failure puts it back);
    without it, an existing non-empty `final` wins and the new copy is dropped (another
    process published the same thing first). Any failure removes the temporary; an I/O
    failure is a `SteplabError` naming `final` and the cause, anything else passes through.
    """
    final = Path(final)
    try:
        with staging_dir(final) as tmp:
            write(tmp)
            if marker:
                write_marker(tmp, marker, kind=marker)
            fsync_tree(tmp)
            publish(tmp, final, replace=replace)
    except SteplabError:
        raise
    except Exception as e:
        err = io_error(what, final, e)
        if err is None:
            raise
        raise err from None


def publish(tmp: Path, final: Path, *, replace: bool, old_prefix: str | None = None) -> None:
    """Rename directory `tmp` to `final` (see `write_dir`)."""
    if replace and final.exists():
        old = Path(tempfile.mkdtemp(dir=final.parent, prefix=old_prefix or f".{final.name}.old-"))
        os.replace(final, old / final.name)
        try:
            os.replace(tmp, final)
        except BaseException:
            os.replace(old / final.name, final)  # put the previous version back
            raise
        finally:
            fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, final)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
        return  # another process published the same directory first: keep theirs
    fsync_dir(final.parent)


def leftovers(parent: Path, name: str = "") -> list[Path]:
    """What a killed atomic write left in `parent` (for `name`, or for any name)."""
    if not parent.is_dir():
        return []
    pattern = f".{name}.tmp-*" if name else ".*.tmp-*"
    old = f".{name}.old-*" if name else ".*.old-*"
    return sorted([*parent.glob(pattern), *parent.glob(old)])


def remove_leftovers(parent: Path, name: str = "") -> None:
    for p in leftovers(parent, name):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


# --- what an overwrite may remove ---------------------------------------------------------------


def danger_zones(reads: Sequence[Path] = ()) -> list[tuple[Path, str]]:
    """Directories an overwrite must never remove: the root, $HOME, the current directory and
    its parents, and each directory read from (and its parents)."""
    zones = [(Path("/"), "the root directory"), (Path.home(), "your home directory")]
    cwd = Path.cwd().resolve()
    zones += [(cwd, "the current directory")] + [
        (p, "a parent of the current directory") for p in cwd.parents
    ]
    for r in reads:
        r = Path(r).resolve()
        zones += [(r, f"the run it reads ({r})")] + [
            (p, f"a parent of the run it reads ({r})") for p in r.parents
        ]
    return zones


def check_replaceable(target: Path, *, marker: str, flag: str, reads: Sequence[Path] = ()) -> None:
    """Refuse to replace `target` unless steplab wrote it (it holds `marker`, which lists
    every file in it) and it is none of `danger_zones`."""
    target = Path(target)
    resolved = target.resolve()
    for zone, why in danger_zones(reads):
        if resolved == zone:
            raise SteplabError(f"{flag} {target} is {why}: steplab never replaces it; choose a new directory")
    if target.is_symlink() or not target.is_dir():
        raise SteplabError(
            f"{flag} {target} exists and is not a directory steplab wrote; choose another path"
        )
    listed = _listed_files(target / marker)
    if listed is None:
        raise SteplabError(
            f"{flag} {target} exists and was not written by steplab (no {marker}); "
            "choose a new directory, or empty it yourself"
        )
    present = {str(p.relative_to(target)) for p in target.rglob("*") if not p.is_dir()}
    foreign = sorted(present - listed - {marker})
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise SteplabError(
            f"{flag} {target} holds files steplab did not write ({shown}); "
            "move them away or choose a new directory"
        )


def _listed_files(path: Path) -> set[str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return set(files)


def write_marker(root: Path, marker: str, *, kind: str, **extra: Any) -> None:
    """The file that says steplab wrote `root`, listing every file in it (written last)."""
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())
    (root / marker).write_text(json.dumps({"format": kind, **extra, "files": files}, indent=1))
