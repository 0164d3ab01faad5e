"""Hyperparameter search on Optuna: `steplab tune`.

A trial is `steplab.loop.fit.train` with sampled values set on the base config, a pruning
callback that reports each evaluation's validation loss, and its own run directory under the
study directory. The search space is a small TOML file, one table per config field::

    [optim.lr]
    type = "log_float"        # float, log_float, int, log_int or categorical
    low = 1e-4
    high = 1e-2

    [optim.name]
    type = "categorical"
    choices = ["adamw", "adam"]

Storage: a journal file in the study directory by default, so running the same command again
resumes the study (and N local worker processes can share it safely); ``sqlite:///…`` for
one process, ``postgresql://…`` for workers on many machines (RDB storages get Optuna's
heartbeat, and a dead worker's trial is failed and retried). Journal storage has no
heartbeat, so each trial records its worker (host, pid, process start time) and the workers
fail and re-enqueue the trials of workers on this host that no longer exist.

``--trials N`` is the number of finished (complete or pruned) trials the study should hold,
all workers together, as Optuna's MaxTrialsCallback counts. A worker starts a trial only
while finished plus running trials are fewer than N, and a trial that a race between two
workers' claims makes the (N+1)-th is failed as "surplus" before it trains. A worker whose
next trial is not needed waits for the others' running trials: if one dies, its retry runs.

A trial that diverges is pruned (the sampler learns the region is bad); one that runs out of
memory or raises is recorded as failed; either way the study goes on.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import random
import shutil
import socket
import time
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from steplab.config import SECTIONS, RunConfig, dump_toml, set_value
from steplab.errors import ConfigError, SteplabError
from steplab.loop.fit import train
from steplab.loop.hooks import Callback
from steplab.loop.session import Session, check

KINDS = ("float", "log_float", "int", "log_int", "categorical")


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a dependency, but keep the error clear
        raise SteplabError("steplab tune needs optuna: pip install optuna") from None
    return optuna


# --- the search space ------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    key: str  # "section.field", e.g. "optim.lr"
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()


def parse_space(data: dict[str, Any], source: str = "space") -> list[Param]:
    """Search-space tables (``{"optim": {"lr": {"type": ...}}}``) as `Param`s, checked against
    the config tree: an unknown field, kind or range is an error naming the table."""
    out = []
    for section, fields in data.items():
        if section not in SECTIONS or not isinstance(fields, dict):
            raise ConfigError(f"{source}: [{section}] is not a config section (valid: {', '.join(SECTIONS)})")
        names = {f.name for f in dataclasses.fields(SECTIONS[section])}
        for name, spec in fields.items():
            key = f"{section}.{name.replace('-', '_')}"
            where = f"{source}: [{section}.{name}]"
            if key.split(".")[1] not in names:
                raise ConfigError(f"{where}: {section} has no field {name!r}")
            if not isinstance(spec, dict) or spec.get("type") not in KINDS:
                raise ConfigError(f"{where}: needs type = one of {', '.join(KINDS)}")
            kind = spec["type"]
            unknown = set(spec) - {"type", "low", "high", "step", "choices"}
            if unknown:
                raise ConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
            if kind == "categorical":
                choices = spec.get("choices")
                if not isinstance(choices, list) or not choices:
                    raise ConfigError(f"{where}: categorical needs a non-empty list `choices`")
                for c in choices:  # each choice must be a valid value of the field
                    set_value(RunConfig(), key, c, where=f"{where} choice {c!r}")
                out.append(Param(key, kind, choices=tuple(choices)))
                continue
            low, high, step = spec.get("low"), spec.get("high"), spec.get("step")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
                raise ConfigError(f"{where}: needs numbers low < high (got {low!r}, {high!r})")
            if kind.startswith("log") and low <= 0:
                raise ConfigError(f"{where}: a log scale needs low > 0 (got {low})")
            if kind.startswith("log") and step is not None:
                raise ConfigError(f"{where}: `step` cannot be combined with a log scale")
            set_value(RunConfig(), key, low if kind.endswith("float") else int(low), where=f"{where} low")
            out.append(Param(key, kind, float(low), float(high), None if step is None else float(step)))
    if not out:
        raise ConfigError(f"{source}: the search space is empty")
    return out


def load_space(path: str | Path) -> list[Param]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space: {p} not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--space: {p} is not valid TOML ({e})") from None
    return parse_space(data, str(p))


def sample(trial: Any, space: Sequence[Param]) -> dict[str, Any]:
    """One value per parameter from an Optuna trial (named by the config key)."""
    out: dict[str, Any] = {}
    for p in space:
        assert p.low is not None or p.kind == "categorical"
        if p.kind == "categorical":
            out[p.key] = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind.endswith("int"):
            out[p.key] = trial.suggest_int(
                p.key, int(p.low or 0), int(p.high or 0), step=int(p.step or 1), log=p.kind == "log_int"
            )
        else:
            out[p.key] = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.kind == "log_float")
    return out


def apply(base: RunConfig, params: dict[str, Any]) -> RunConfig:
    """`base` with `params` set (a copy); the result is validated."""
    cfg = copy.deepcopy(base)
    for key, value in params.items():
        set_value(cfg, key, value, where=f"--space {key}")
    return check(cfg)


# --- storage and workers ---------------------------------------------------------------------


HEARTBEAT_S, GRACE_S = 30, 120  # RDB: a trial without a heartbeat for GRACE_S is failed and retried


def open_storage(
    spec: str | None, study_dir: Path, *, workers: int = 1, heartbeat: int = HEARTBEAT_S, grace: int = GRACE_S
) -> Any:
    """Journal file (default, or a path / ``journal:PATH``), or an RDB URL with heartbeat."""
    optuna = _optuna()
    if spec is None or spec.startswith("journal:") or "://" not in spec:
        path = Path(spec.removeprefix("journal:")) if spec else study_dir / "journal.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    if spec.startswith("sqlite") and workers > 1:
        raise ConfigError(
            "--storage sqlite does not take concurrent writers safely; use the default journal storage "
            "for --workers > 1 (or postgresql:// for many machines)"
        )
    url = postgres_url(spec) if spec.startswith(("postgresql", "postgres:")) else spec
    return _rdb_storage(url, heartbeat, grace, shown=spec)


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


def _rdb_storage(url: str, heartbeat: int, grace: int, *, shown: str, attempts: int = 5) -> Any:
    """RDBStorage with heartbeat and retried stale trials.

    Workers that start together on a fresh database race to create Optuna's tables, and
    PostgreSQL's ``CREATE TABLE IF NOT EXISTS`` is not atomic: the loser gets a duplicate-key
    error. Trying again finds the tables made, so such errors are retried a few times.
    """
    optuna = _optuna()
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


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), '' elsewhere: with the pid
    it names a process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def worker_id(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid)}"


def worker_alive(wid: str) -> bool:
    """False only when `wid` is a worker on this host that no longer exists."""
    host, _, rest = wid.partition(":")
    pid_s, _, started = rest.partition(":")
    if host != socket.gethostname() or not pid_s.isdigit():
        return True  # another machine: its storage's heartbeat (RDB) or its owner decides
    pid = int(pid_s)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _start_time(pid) == started


def recover_dead_trials(study: Any) -> list[int]:
    """Fail the running trials whose local worker has died and enqueue them again.

    Optuna has no public call to finish another process's trial, hence the storage calls.
    """
    optuna = _optuna()
    TrialState = optuna.trial.TrialState
    retried = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        wid = t.user_attrs.get("worker")
        if not wid or worker_alive(wid):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "failure", "worker died")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except Exception:  # another worker got there first
            continue
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        retried.append(t.number)
    return retried


# --- trials ----------------------------------------------------------------------------------


class ReportToTrial(Callback):
    """Reports every evaluation's validation loss to the trial; raises TrialPruned when told."""

    def __init__(self, trial: Any):
        self.trial = trial

    def on_eval(self, s: Session, state: Any, record: dict[str, Any]) -> None:
        optuna = _optuna()
        loss = record["val_loss"]
        if not math.isfinite(loss):
            self.trial.set_user_attr("status", "diverged")
            raise optuna.TrialPruned(f"validation loss {loss} at step {state.step}")
        self.trial.report(loss, state.step)
        if self.trial.should_prune():
            self.trial.set_user_attr("status", "pruned")
            raise optuna.TrialPruned(f"pruned at step {state.step} (val_loss {loss:.4f})")


def _is_oom(e: BaseException) -> bool:
    return "out of memory" in str(e).lower() or type(e).__name__ == "OutOfMemoryError"


@dataclass
class Objective:
    """Train one trial: base config + sampled values; return the final validation loss."""

    base: RunConfig
    space: list[Param]
    study_dir: Path
    keep_checkpoints: bool = False
    stopper: Stopper | None = None  # when given, a trial the study does not need is not run

    def __call__(self, trial: Any) -> float:
        optuna = _optuna()
        trial.set_user_attr("worker", worker_id())
        if self.stopper is not None and self.stopper.surplus(trial):
            trial.set_user_attr("failure", "surplus")
            raise Surplus(f"the study already has --trials {self.stopper.target} trials; not run")
        params = sample(trial, self.space)
        run_dir = self.study_dir / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            cfg = apply(self.base, params)
            cfg.checkpoint.keep_best, cfg.checkpoint.every = False, 0  # one checkpoint at the end, at most
            result = train(cfg, run_dir, overwrite=True, callbacks=[ReportToTrial(trial)], progress=False)
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("status", "out of memory" if _is_oom(e) else "crashed")
            trial.set_user_attr("failure", f"{type(e).__name__}: {e}"[:500])
            raise
        finally:
            if not self.keep_checkpoints:
                shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
        trial.set_user_attr("status", result.status)
        trial.set_user_attr("steps", result.state.step)
        if result.status == "interrupted":  # SIGINT/SIGTERM: stop, and run this trial again next time
            trial.set_user_attr("failure", "interrupted")
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            trial.study.stop()
            raise KeyboardInterrupt
        val = result.final.get("val_loss", result.state.best_val_loss)
        if result.status == "diverged" or val is None or not math.isfinite(val):
            trial.set_user_attr("status", "diverged")
            raise optuna.TrialPruned(f"diverged at step {result.state.step}")
        return float(val)


class Surplus(Exception):
    """A trial created after the study had all the trials it needs (two workers raced)."""


@dataclass(frozen=True)
class Tally:
    done: int  # complete or pruned: what --trials counts
    running: int
    waiting: int
    failed: int  # failures that count against max_failures: not retried, not surplus


def tally(trials: Sequence[Any]) -> Tally:
    """Count a study's trials. A failed trial that was enqueued again (a dead worker's, an
    interrupted one) or that was never run (surplus) is not a failure of the search."""
    S = _optuna().trial.TrialState
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:  # Optuna's retry callback (RDB heartbeat) records the chain here
        retried.update(t.system_attrs.get("retry_history", ()))
    return Tally(
        done=sum(t.state in (S.COMPLETE, S.PRUNED) for t in trials),
        running=sum(t.state == S.RUNNING for t in trials),
        waiting=sum(t.state == S.WAITING for t in trials),
        failed=sum(
            t.state == S.FAIL and t.number not in retried and t.user_attrs.get("failure") != "surplus"
            for t in trials
        ),
    )


class Stopper:
    """Decides when a worker starts trials, waits, or returns, for a study that should hold
    `target` finished (complete or pruned) trials, all workers together.

    - a worker starts a trial while finished + running trials are fewer than `target`;
    - it returns once `target` trials finished, or `max_failures` trials failed;
    - between the two it waits: another worker's running trial may still die and be retried.
    Two workers can both see room for one more trial and start one each; the trial with the
    higher number is then the surplus (`surplus`) and fails before it trains.
    """

    def __init__(self, target: int, max_failures: int):
        self.target, self.max_failures = target, max_failures
        self.reason = ""

    def counts(self, study: Any) -> Tally:
        return tally(study.get_trials(deepcopy=False))

    def finished(self, study: Any) -> bool:
        c = self.counts(study)
        if c.done >= self.target:
            self.reason = f"the study has {c.done} finished trials (--trials {self.target})"
        elif c.failed >= self.max_failures:
            self.reason = f"{c.failed} trials failed (their `failure` attribute says why)"
        else:
            return False
        return True

    def room(self, study: Any) -> bool:
        """Whether the study needs another trial started now."""
        c = self.counts(study)
        return c.done + c.running < self.target and c.failed < self.max_failures

    def surplus(self, trial: Any) -> bool:
        """Whether `trial` (just created or popped from the queue) is one too many: trial
        numbers order the workers' claims, so of two racing claims the later one yields."""
        S = _optuna().trial.TrialState
        live = (S.COMPLETE, S.PRUNED, S.RUNNING, S.WAITING)
        before = [t for t in trial.study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        return len(before) >= self.target

    def __call__(self, study: Any, trial: Any) -> None:  # after each trial
        if not self.room(study):
            study.stop()


# --- the study -------------------------------------------------------------------------------


@dataclass
class TuneSpec:
    """Everything a worker process needs (picklable: the config travels as TOML)."""

    base_toml: str
    space: list[Param]
    study_name: str
    study_dir: str
    storage: str | None
    trials: int
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    workers: int = 1
    keep_checkpoints: bool = False
    max_failures: int | None = None


SAMPLERS: dict[str, Callable[[int, int], Any]] = {
    "tpe": lambda seed, trials: _optuna().samplers.TPESampler(
        seed=seed, n_startup_trials=max(3, min(10, trials // 4))
    ),
    "random": lambda seed, trials: _optuna().samplers.RandomSampler(seed=seed),
}

PRUNERS: dict[str, Callable[[], Any]] = {
    "median": lambda: _optuna().pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0),
    "halving": lambda: _optuna().pruners.SuccessiveHalvingPruner(),
    "none": lambda: _optuna().pruners.NopPruner(),
}


def open_study(spec: TuneSpec, *, worker: int = 0) -> Any:
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler: unknown sampler {spec.sampler!r} (valid: {', '.join(SAMPLERS)})")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"--pruner: unknown pruner {spec.pruner!r} (valid: {', '.join(PRUNERS)})")
    optuna = _optuna()
    storage = open_storage(spec.storage, Path(spec.study_dir), workers=spec.workers)
    return optuna.create_study(
        study_name=spec.study_name,
        storage=storage,
        sampler=SAMPLERS[spec.sampler](
            _sampler_seed(spec, worker), spec.trials
        ),  # workers must not share a seed
        pruner=PRUNERS[spec.pruner](),
        direction="minimize",
        load_if_exists=True,
    )


def _sampler_seed(spec: TuneSpec, worker: int) -> int:
    """`--seed` plus the local worker's index; on a shared RDB storage also the process's
    identity, since workers on other machines are started with the same --seed (and would
    otherwise draw the same random start-up points)."""
    seed = spec.seed + worker
    if spec.storage and "://" in spec.storage and not spec.storage.startswith("sqlite"):
        seed += zlib.crc32(worker_id().encode())
    return seed % 2**32


def recover(study: Any) -> None:
    """Retry the trials of dead workers: local ones by pid (any storage), others by missing
    heartbeat (RDB storages; Optuna's RetryFailedTrialCallback enqueues them again)."""
    optuna = _optuna()
    recover_dead_trials(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def run_worker(spec: TuneSpec, worker: int = 0, *, quiet: bool = False, poll: float = 2.0) -> None:
    """One worker: run trials until the study holds `spec.trials` finished ones (or too many
    failed), waiting out the other workers' running trials at the end."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING if quiet else optuna.logging.INFO)
    from steplab.config import from_dict

    base = from_dict(tomllib.loads(spec.base_toml))
    if spec.workers > 1 and base.train.threads is None:  # share the cores between the workers
        base.train.threads = max(1, (os.cpu_count() or 1) // spec.workers)
    study = open_study(spec, worker=worker)
    stopper = Stopper(spec.trials, spec.max_failures or max(5, spec.trials))
    objective = Objective(base, spec.space, Path(spec.study_dir), spec.keep_checkpoints, stopper)
    told = False
    while True:
        recover(study)
        if stopper.finished(study):
            return
        if stopper.room(study):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, callbacks=[stopper], catch=(Exception,), gc_after_trial=True)
            continue
        if not told and not quiet:
            n = stopper.counts(study).running
            print(f"worker {worker_id()}: waiting for {n} trials running on other workers", flush=True)
            told = True
        time.sleep(poll)  # another worker's trial finishes, or dies and is enqueued again


def _worker_main(spec: TuneSpec, worker: int, quiet: bool) -> None:  # the spawned process's entry
    run_worker(spec, worker, quiet=quiet)


def run_study(spec: TuneSpec, *, quiet: bool = False) -> Any:
    """Run (or resume) the study with `spec.workers` local workers; return the loaded study."""
    optuna = _optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING if quiet else optuna.logging.INFO)
    study_dir = Path(spec.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    base_path = study_dir / "base.toml"
    if base_path.exists() and base_path.read_text() != spec.base_toml:
        warnings.warn(
            f"{base_path}: the base config differs from the one this study started with", stacklevel=2
        )
    base_path.write_text(spec.base_toml)
    if spec.workers <= 1:
        run_worker(spec, 0, quiet=quiet)
    else:
        open_study(spec)  # create it once, before the workers race to
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # a clean interpreter per worker (no forked torch state)
        procs = [ctx.Process(target=_worker_main, args=(spec, i, quiet)) for i in range(spec.workers)]
        for p in procs:
            p.start()
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            for p in procs:
                p.terminate()  # SIGTERM: each worker checkpoints, re-enqueues its trial and stops
            for p in procs:
                p.join()
            raise
    return open_study(spec)


# --- results ---------------------------------------------------------------------------------


def best_trials(study: Any, k: int = 5) -> list[Any]:
    S = _optuna().trial.TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(S.COMPLETE,)) if t.value is not None]
    return sorted(done, key=lambda t: t.value)[:k]


def table(study: Any, k: int = 5) -> str:
    """The best `k` trials as a plain-text table, with the study's counts."""
    S = _optuna().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): sum(t.state == s for t in trials) for s in (S.COMPLETE, S.PRUNED, S.FAIL, S.RUNNING)
    }
    rows = best_trials(study, k)
    keys = sorted({key for t in rows for key in t.params})
    head = ["trial", "val_loss", *keys]
    body = [[str(t.number), f"{t.value:.4f}", *(_fmt(t.params.get(key)) for key in keys)] for t in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
    summary = ", ".join(f"{n} {name}" for name, n in counts.items() if n)
    return "\n".join([f"study {study.study_name}: {summary}", *lines])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def write_outputs(study: Any, spec: TuneSpec) -> dict[str, Path]:
    """best.toml (base + best values: `steplab train --config` takes it), trials.json, plots."""
    from steplab.config import from_dict

    out_dir = Path(spec.study_dir)
    written: dict[str, Path] = {}
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "user_attrs": t.user_attrs,
            "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
        }
        for t in study.get_trials(deepcopy=False)
    ]
    written["trials"] = out_dir / "trials.json"
    written["trials"].write_text(json.dumps(rows, indent=1, default=str))
    best = best_trials(study, 1)
    if not best:
        return written
    cfg = apply(from_dict(tomllib.loads(spec.base_toml)), best[0].params)
    written["best"] = out_dir / "best.toml"
    written["best"].write_text(
        f"# steplab tune: best of study {study.study_name!r}, trial {best[0].number}, "
        f"val_loss {best[0].value:.4f}\n" + dump_toml(cfg)
    )
    written.update(_plots(study, out_dir))
    return written


def _plots(study: Any, out_dir: Path) -> dict[str, Path]:
    optuna = _optuna()
    from steplab.figures import pyplot

    plt = pyplot()
    out: dict[str, Path] = {}
    vis = optuna.visualization.matplotlib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both plots are marked experimental
        for name, fn in (
            ("history", vis.plot_optimization_history),
            ("importances", vis.plot_param_importances),
        ):
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as e:  # e.g. importances need two complete trials
                warnings.warn(f"no {name} plot: {e}", stacklevel=2)
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = out_dir / f"{name}.png"
            fig.tight_layout()
            fig.savefig(path, dpi=110)
            plt.close(fig)
            out[name] = path
    return out
