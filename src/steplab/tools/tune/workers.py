"""Many workers on one study: who runs which trial, who is still alive, when to stop.

Journal storage has no heartbeat, so each trial records its worker (host, pid, process start
time) and the workers fail and re-enqueue the trials of workers on this host that no longer
exist. RDB storages also have Optuna's heartbeat, which catches workers on other machines.

``--trials N`` is the number of finished (complete or pruned) trials the study should hold,
all workers together, as Optuna's MaxTrialsCallback counts. A worker starts a trial only
while finished plus running trials are fewer than N, and a trial that a race between two
workers' claims makes the (N+1)-th is failed as "surplus" before it trains. A worker whose
next trial is not needed waits for the others' running trials: if one dies, its retry runs.
"""

from __future__ import annotations

import os
import socket
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from steplab.locks import process_alive, process_start
from steplab.tools.tune.space import optuna_module


def worker_id(pid: int | None = None) -> str:
    """host:pid:start-time of a worker process (with the pid it names a process even after the pid is reused)."""
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{process_start(pid) or ''}"


def worker_alive(wid: str) -> bool:
    """False only when `wid` is a worker on this host that no longer exists (`steplab.locks.process_alive`)."""
    host, _, rest = wid.partition(":")
    pid_s, _, started = rest.partition(":")
    if not pid_s.isdigit():
        return True  # not ours to judge
    info = {"pid": int(pid_s), "host": host, "pid_start": int(started) if started.isdigit() else None}
    return (
        process_alive(info) is not False
    )  # another machine: its storage's heartbeat (RDB) or its owner decides


def recover_dead_trials(study: Any) -> list[int]:
    """Fail the running trials whose local worker has died and enqueue them again.

    Optuna has no public call to finish another process's trial, hence the storage calls.
    """
    optuna = optuna_module()
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


@dataclass(frozen=True)
class Tally:
    done: int  # complete or pruned: what --trials counts
    running: int
    waiting: int
    failed: int  # failures that count against max_failures: not retried, not surplus


def tally(trials: Sequence[Any]) -> Tally:
    """Count a study's trials. A failed trial that was enqueued again (a dead worker's, an
    interrupted one) or that was never run (surplus) is not a failure of the search."""
    S = optuna_module().trial.TrialState
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
        S = optuna_module().trial.TrialState
        live = (S.COMPLETE, S.PRUNED, S.RUNNING, S.WAITING)
        before = [t for t in trial.study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        return len(before) >= self.target

    def __call__(self, study: Any, trial: Any) -> None:  # after each trial
        if not self.room(study):
            study.stop()


def recover(study: Any) -> None:
    """Retry the trials of dead workers: local ones by pid (any storage), others by missing
    heartbeat (RDB storages; Optuna's RetryFailedTrialCallback enqueues them again)."""
    optuna = optuna_module()
    recover_dead_trials(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
