"""The study: open (or resume) it, and run its trials in one or many local worker processes.

Storage: a journal file in the study directory by default, so running the same command again
resumes the study (`steplab.tools.tune.storage`). With ``--workers N`` the parent process
starts N spawned workers on the same storage and shows the progress of all of them
(`steplab.tools.tune.watch`); one worker runs in the calling process.
"""

from __future__ import annotations

import os
import time
import tomllib
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab.atomic import write_file
from steplab.errors import ConfigError
from steplab.tools.tune.objective import Objective
from steplab.tools.tune.space import Param, optuna_module
from steplab.tools.tune.storage import open_storage
from steplab.tools.tune.watch import TrialWatch
from steplab.tools.tune.workers import Stopper, recover, worker_id


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
    "tpe": lambda seed, trials: optuna_module().samplers.TPESampler(
        seed=seed, n_startup_trials=max(3, min(10, trials // 4))
    ),
    "random": lambda seed, trials: optuna_module().samplers.RandomSampler(seed=seed),
}

PRUNERS: dict[str, Callable[[], Any]] = {
    "median": lambda: optuna_module().pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0),
    "halving": lambda: optuna_module().pruners.SuccessiveHalvingPruner(),
    "none": lambda: optuna_module().pruners.NopPruner(),
}


def open_study(spec: TuneSpec, *, worker: int = 0) -> Any:
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"--sampler: unknown sampler {spec.sampler!r} (valid: {', '.join(SAMPLERS)})")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"--pruner: unknown pruner {spec.pruner!r} (valid: {', '.join(PRUNERS)})")
    optuna = optuna_module()
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


def run_worker(
    spec: TuneSpec,
    worker: int = 0,
    *,
    quiet: bool = False,
    poll: float = 2.0,
    watch: TrialWatch | None = None,
) -> None:
    """One worker: run trials until the study holds `spec.trials` finished ones (or too many
    failed), waiting out the other workers' running trials at the end. `watch` (in-process
    runs) reports each finished trial."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # steplab's own lines say what happens
    from steplab.config import from_dict

    base = from_dict(tomllib.loads(spec.base_toml))
    if spec.workers > 1 and base.train.threads is None:  # share the cores between the workers
        base.train.threads = max(1, (os.cpu_count() or 1) // spec.workers)
    study = open_study(spec, worker=worker)
    stopper = Stopper(spec.trials, spec.max_failures or max(5, spec.trials))
    objective = Objective(base, spec.space, Path(spec.study_dir), spec.keep_checkpoints, stopper)
    callbacks: list[Callable[[Any, Any], None]] = [stopper] + ([watch.poll] if watch else [])
    told = False
    while True:
        recover(study)
        if stopper.finished(study):
            return
        if stopper.room(study):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", category=optuna.exceptions.ExperimentalWarning)
                study.optimize(objective, callbacks=callbacks, catch=(Exception,), gc_after_trial=True)
            continue
        if not told and not quiet:
            n = stopper.counts(study).running
            text = f"worker {worker_id()}: waiting for {n} trials running on other workers"
            if watch is not None:
                watch.view.line(text)
            else:
                print(text, flush=True)
            told = True
        time.sleep(poll)  # another worker's trial finishes, or dies and is enqueued again


def _worker_main(spec: TuneSpec, worker: int) -> None:  # the spawned process's entry
    run_worker(spec, worker, quiet=True)  # the parent reports for every worker


def run_study(spec: TuneSpec, *, quiet: bool = False, poll: float = 2.0) -> Any:
    """Run (or resume) the study with `spec.workers` local workers; return the loaded study.

    Unless `quiet`, a bar over the trials with an ETA and one line per finished trial."""
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(spec)  # created once, before any worker races to (a bad storage fails here)
    study_dir = Path(spec.study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    base_path = study_dir / "base.toml"
    if base_path.exists() and base_path.read_text() != spec.base_toml:
        warnings.warn(
            f"{base_path}: the base config differs from the one this study started with", stacklevel=2
        )
    write_file(base_path, spec.base_toml)
    _prepare_data(spec, progress=not quiet)
    watch = TrialWatch(spec.trials, enabled=not quiet, study=study)
    try:
        if spec.workers <= 1:
            run_worker(spec, 0, quiet=quiet, poll=poll, watch=watch)
        else:
            _run_processes(spec, study, watch, poll)
        watch.poll(study)
    finally:
        watch.close()
    return open_study(spec)


def _prepare_data(spec: TuneSpec, *, progress: bool) -> None:
    """Tokenize the base config's corpus before the bar starts (the trials find it cached)."""
    from steplab.config import from_dict
    from steplab.data.cache import prepare

    base = from_dict(tomllib.loads(spec.base_toml))
    prepare(base.data, base.tokenizer, progress=progress)


def _run_processes(spec: TuneSpec, study: Any, watch: TrialWatch, poll: float) -> None:
    """`spec.workers` spawned workers; this process reports their trials as they finish."""
    import multiprocessing as mp
    import multiprocessing.connection

    ctx = mp.get_context("spawn")  # a clean interpreter per worker (no forked torch state)
    procs = [ctx.Process(target=_worker_main, args=(spec, i)) for i in range(spec.workers)]
    for p in procs:
        p.start()
    try:
        while alive := [p.sentinel for p in procs if p.is_alive()]:
            mp.connection.wait(alive, timeout=poll)  # a worker ends, or it is time to look again
            watch.poll(study)
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()  # SIGTERM: each worker checkpoints, re-enqueues its trial and stops
        for p in procs:
            p.join()
        raise
