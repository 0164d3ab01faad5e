"""steplab tune on PostgreSQL: several worker processes share one study on a real server.

The fixture starts a throwaway PostgreSQL server for the test session (initdb in a temporary
directory, 127.0.0.1 only, trust auth) and stops it at the end. initdb refuses to run as
root, so as root the server runs as the `postgres` system user. The tests skip only when no
server binaries or no psycopg2 driver can be found.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from steplab.config import RunConfig, dump_toml
from steplab.tools.tune import Param, TuneSpec, open_storage, run_worker, tally

S = optuna.trial.TrialState


def _pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl: PATH first, then Debian's /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(os.path.realpath(found)).parent
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()],
    )
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    pytest.importorskip("psycopg2", reason="the postgres extra (psycopg2-binary) is not installed")
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) in PATH or /usr/lib/postgresql/*/bin")
    as_user: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="steplab-pg-"))  # not under pytest's 0700 root-owned basetemp
    if os.geteuid() == 0:  # initdb refuses root: run the server as the Debian package's user
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run the server as")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = tmp / "data", _free_port()

    def run(*argv: str) -> None:
        proc = subprocess.run([*as_user, *argv], capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            log = tmp / "server.log"
            raise RuntimeError(
                f"{' '.join(argv)} failed:\n{proc.stdout}{proc.stderr}"
                + (log.read_text() if log.exists() else "")
            )

    run(str(bindir / "initdb"), "-D", str(data), "-U", "steplab", "-A", "trust", "-E", "UTF8", "--no-sync")
    opts = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={tmp} -c fsync=off"
    run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "server.log"), "-w", "start")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "steplab", "tune")
        yield f"postgresql://steplab@127.0.0.1:{port}/tune"
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(tmp, ignore_errors=True)


SPACE = """
[optim.lr]
type = "log_float"
low = 1e-3
high = 3e-2

[optim.name]
type = "categorical"
choices = ["adamw", "adam"]
"""


def test_two_workers_share_a_postgres_study(tmp_path: Path, postgres_url: str) -> None:
    """Two `steplab tune` processes, started together as if on two machines, each with its own
    directory: the study holds exactly --trials finished trials, each recorded once."""
    (tmp_path / "space.toml").write_text(SPACE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}

    def worker(i: int) -> subprocess.Popen:
        argv = [sys.executable, "-m", "steplab", "tune", "--preset", "tiny", "--space", "space.toml"]
        argv += ["--storage", postgres_url, "--study", "two", "--dir", f"w{i}", "--trials", "6"]
        argv += ["--train.max-steps", "30", "--eval.every", "10", "--eval.max-windows", "8", "--quiet"]
        argv += ["--train.tensorboard", "false", "--train.threads", "1"]
        return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    procs = [worker(0), worker(1)]  # a fresh database: they also race to create Optuna's tables
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
        summary = re.search(r"study two: (.*)", out.decode())
        assert summary, out.decode()[-3000:]
        counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", summary.group(1))}
        assert counts.get("complete", 0) + counts.get("pruned", 0) == 6  # each returned when all were done

    study = optuna.load_study(study_name="two", storage=open_storage(postgres_url, tmp_path))
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # each trial recorded once
    finished = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len(finished) == 6
    others = [t for t in trials if t not in finished]  # only trials two racing claims made surplus
    assert all(t.state == S.FAIL and t.user_attrs["failure"] == "surplus" and not t.params for t in others)
    assert sum(t.state == S.COMPLETE for t in finished) >= 1
    by_worker: dict[str, list[int]] = {}
    for t in finished:
        by_worker.setdefault(t.user_attrs["worker"], []).append(t.number)
        assert (tmp_path / t.user_attrs["run_dir"] / "metrics.jsonl").exists()  # relative to its --dir
    pids = {int(w.split(":")[1]) for w in by_worker}
    assert pids == {p.pid for p in procs}, by_worker  # each process ran some of the trials
    params = [tuple(sorted(t.params.items())) for t in finished]
    assert len(set(params)) == len(params)  # the workers' samplers are seeded apart


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_a_trial_without_heartbeat_is_retried_by_a_worker(
    postgres_url: str, tmp_path: Path, tiny_cfg: RunConfig
) -> None:
    """A worker on another machine died mid-trial (its heartbeat is an hour old): the next
    worker fails that trial, runs its retry with the same parameters, and the failure is not
    counted against the study."""
    lr = Param("optim.lr", "log_float", 1e-3, 3e-2)
    storage = open_storage(postgres_url, tmp_path)
    study = optuna.create_study(study_name="stale", storage=storage)
    dead = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-3, 3e-2, log=True)})
    dead.set_user_attr("worker", "another-host:1:1")  # not a local pid: only the heartbeat can tell
    storage.record_heartbeat(dead._trial_id)
    import sqlalchemy

    with storage.engine.begin() as conn:  # as if the worker stopped beating an hour ago
        conn.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '1 hour'"))
    tiny_cfg.train.max_steps, tiny_cfg.eval.every, tiny_cfg.eval.max_windows = 10, 5, 16
    spec = TuneSpec(
        base_toml=dump_toml(tiny_cfg),
        space=[lr],
        study_name="stale",
        study_dir=str(tmp_path / "study"),
        storage=postgres_url,
        trials=1,
        pruner="none",
    )
    # a thread, so that a worker that never sees the trial as stale (and waits) fails the test
    worker = threading.Thread(target=run_worker, args=(spec,), kwargs={"quiet": True}, daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "the worker still waits for the dead worker's trial"
    trials = study.get_trials()
    assert [t.state for t in trials] == [S.FAIL, S.COMPLETE]
    assert trials[1].params == dead.params and trials[1].system_attrs["retry_history"] == [0]
    assert tally(trials).failed == 0
