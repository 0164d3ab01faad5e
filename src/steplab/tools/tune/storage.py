"""Where a study lives: a journal file (the default), or a database URL.

A journal file in the study directory means running the same command again resumes the
study, and N local worker processes can share it safely. ``sqlite:///…`` suits one process;
``postgresql://…`` (or any SQLAlchemy URL: ``mysql://…``) workers on many machines, with
Optuna's heartbeat so that a dead worker's trial is failed and retried.

What goes wrong is one line: a journal whose last record was torn by a kill or a full disk
is repaired (the torn tail dropped, the file kept as a backup first); damage elsewhere in it
is refused with what to do; a database URL whose Python driver is not installed names the
package to install.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from steplab.errors import ConfigError, SteplabError
from steplab.progress import plural
from steplab.tools.tune.space import optuna_module

HEARTBEAT_S, GRACE_S = 30, 120  # RDB: a trial without a heartbeat for GRACE_S is failed and retried
# Python module of a database driver -> what to pip install for it.
DRIVER_PACKAGES = {
    "psycopg2": "'steplab[postgres]' (psycopg2-binary)",
    "psycopg": "'psycopg[binary]'",
    "MySQLdb": "mysqlclient (or use mysql+pymysql:// with 'steplab[mysql]')",
    "pymysql": "'steplab[mysql]' (PyMySQL)",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
}


def open_storage(
    spec: str | None, study_dir: Path, *, workers: int = 1, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S
) -> Any:
    """Journal file (default, or a path / ``journal:PATH``), or an RDB URL with heartbeat."""
    optuna = optuna_module()
    if spec is None or spec.startswith("journal:") or "://" not in spec:
        path = Path(spec.removeprefix("journal:")) if spec else study_dir / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        repair_journal(path)
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if spec.startswith("sqlite") and workers > 1:
        raise ConfigError(
            "--storage sqlite does not take concurrent writers safely; use the default journal storage "
            "for --workers > 1 (or postgresql:// for many machines)"
        )
    url = postgres_url(spec) if spec.startswith(("postgresql", "postgres:")) else spec
    url = mysql_url(url) if url.startswith("mysql:") else url
    check_driver(url, shown=spec)
    return _rdb_storage(url, heartbeat, grace, shown=spec)


# --- the journal file ------------------------------------------------------------------------


def damaged_tail(data: bytes) -> int | None:
    """The byte offset where the journal stops being whole JSON lines, or None when it is whole.
    Raises ValueError when a damaged line has whole lines after it (not a torn tail)."""
    offset = 0
    lines = data.split(b"\n")
    for i, line in enumerate(lines):
        last = i == len(lines) - 1
        if last and not line:  # the file ends with a newline: whole
            return None
        try:
            json.loads(line)
            ok = not last  # a last line without its newline was cut mid-write
        except ValueError:
            ok = False
        if not ok:
            if any(rest.strip() for rest in lines[i + 1 :]):
                raise ValueError(i + 1)
            return offset
        offset += len(line) + 1
    return None


def repair_journal(path: Path) -> Path | None:
    """Drop a torn last record (a worker killed mid-write, a full disk) so that the study opens
    again; the file is copied to ``journal.log.torn-TIME`` first. Returns the backup, if any.

    Held under the journal's own lock: a record another worker is appending is never mistaken
    for a torn one. Damage before the last record is refused: only the user can tell which
    trials to keep.
    """
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.exists() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))  # the lock Optuna's own appends take
    lock.acquire()
    try:
        data = path.read_bytes()
        try:
            cut = damaged_tail(data)
        except ValueError as e:
            line = int(e.args[0])
            raise SteplabError(
                f"--storage: {path} is damaged at line {line}, with records after it; restore it from a "
                f"backup, or keep the {plural(line - 1, 'line')} before it (head -n {line - 1} {path.name} > kept.log, "
                f"then move kept.log to {path.name}) and run again"
            ) from None
        if cut is None:
            return None
        backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
        shutil.copy2(path, backup)
        with open(path, "r+b") as fh:
            fh.truncate(cut)
    finally:
        lock.release()
    warnings.warn(
        f"{path}: dropped a torn last record ({len(data) - cut} bytes, left by a killed or out-of-space "
        f"write); the file as it was is kept in {backup.name}",
        stacklevel=2,
    )
    return backup


# --- database URLs ---------------------------------------------------------------------------


def postgres_url(url: str) -> str:
    """A PostgreSQL URL with the driver named: SQLAlchemy 2.1 reads a bare ``postgresql://``
    as psycopg 3, while the `postgres` extra installs psycopg2."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url  # postgresql+DRIVER://: the user chose
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--storage postgresql:// needs a driver: pip install 'steplab[postgres]'"
            ) from None
        return f"postgresql+psycopg{sep}{rest}"
    return f"postgresql+psycopg2{sep}{rest}"


def mysql_url(url: str) -> str:
    """A bare ``mysql://`` with the driver that is installed: mysqlclient (SQLAlchemy's
    default), else PyMySQL (the `mysql` extra)."""
    try:
        import MySQLdb  # noqa: F401
    except ImportError:
        try:
            import pymysql  # noqa: F401
        except ImportError:
            raise ConfigError(
                "--storage mysql:// needs a MySQL driver: pip install 'steplab[mysql]' (PyMySQL)"
            ) from None
        return "mysql+pymysql:" + url.removeprefix("mysql:")
    return url


def check_driver(url: str, *, shown: str) -> None:
    """One line naming what to install when the URL's database driver is missing."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    scheme = shown.partition("://")[0]
    try:
        dialect = make_url(url).get_dialect()
    except (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError):
        raise ConfigError(
            f"--storage {scheme}://: not a database SQLAlchemy knows (a journal file path, sqlite:///FILE, "
            "postgresql://… or mysql://…)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        module = e.name or "its driver"
        package = DRIVER_PACKAGES.get(module, module)
        raise ConfigError(f"--storage {scheme}:// needs the {module} driver: pip install {package}") from None


def _rdb_storage(url: str, heartbeat: int, grace: int, *, shown: str, attempts: int = 5) -> Any:
    """RDBStorage with heartbeat and retried stale trials.

    Workers that start together on a fresh database race to create Optuna's tables, and
    PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is not atomic: the loser gets a duplicate-key
    error. Trying again finds the tables made, so such errors are retried a few times.
    """
    optuna = optuna_module()
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    # optuna 4.9 renamed the retry callback and its keyword; the old names warn
    if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):
        retry_cls, keyword = (
            optuna.storages.RetryHeartbeatStaleTrialCallback,
            "heartbeat_stale_trial_callback",
        )
    else:
        retry_cls, keyword = optuna.storages.RetryFailedTrialCallback, "failed_trial_callback"
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                retry = retry_cls(max_retry=2)
                return optuna.storages.RDBStorage(
                    url, heartbeat_interval=heartbeat, grace_period=grace, **{keyword: retry}
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.1 * 2**attempt * (1 + random.random()))  # jitter: the racers do not retry in step
        except sqlalchemy.exc.OperationalError as e:
            reason = str(getattr(e, "orig", e)).strip().splitlines()[0]
            where = make_url(shown).render_as_string(hide_password=True)
            raise SteplabError(f"--storage: cannot open {where}: {reason}") from None
    raise AssertionError("unreachable")
