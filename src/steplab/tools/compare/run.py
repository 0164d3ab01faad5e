"""Running a compare: train every planned run that is not done yet, resume the interrupted
ones, and read the results back.

Each run is a normal run directory (``OUT/runs/VARIANT/seed-S``) trained by
`steplab.loop.fit.train`, so it can be sampled, evaluated or resumed like any other. Running
the same command again skips finished runs and resumes interrupted ones from their newest
checkpoint. The person watching sees one bar over all the runs (variants x seeds) with an
ETA on a terminal, one line as each run starts and ends elsewhere.
"""

from __future__ import annotations

import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab.config import RunConfig, flatten, load_toml, to_dict
from steplab.errors import SteplabError
from steplab.loop.fit import TrainState, progress_of, train
from steplab.loop.hooks import Callback
from steplab.loop.session import Session
from steplab.progress import ProgressView, fmt_duration, plural
from steplab.rundir import read_json
from steplab.tools.compare.plan import Plan, Variant
from steplab.tools.compare.results import Row, RunResult, aggregate, read_run

DONE = ("finished", "target", "diverged", "stopped")  # statuses that need no more training
_IGNORED = {"model.vocab_size", "train.progress", "train.tensorboard"}


@dataclass
class Comparison:
    """What `compare` did: the ranked rows, the runs read back, and whether it finished."""

    plan: Plan
    out: Path
    rows: list[Row]
    results: list[RunResult]
    status: str  # finished | interrupted
    target: float | None = None

    @property
    def planned(self) -> int:
        return len(self.plan.variants) * len(self.plan.seeds)


def check_same_config(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to continue a run that was started with other settings (another command, same --out)."""
    path = run_dir / "config.toml"
    if not path.exists():
        return
    old, new = flatten(to_dict(load_toml(path))), flatten(to_dict(cfg))
    diff = sorted(k for k in set(old) | set(new) if k not in _IGNORED and old.get(k) != new.get(k))
    if diff:
        k = diff[0]
        raise SteplabError(
            f"{run_dir} holds a run with other settings ({k}: {old.get(k)} there, {new.get(k)} now); "
            "use another --out or pass --overwrite"
        )


def run_state(run_dir: Path) -> str:
    """'done', 'resume' (a checkpoint to continue from), 'restart' (a run without one) or 'new'."""
    from steplab import checkpoint as ckpt

    status = read_json(run_dir / "summary.json").get("status")
    if status in DONE:
        return "done"
    if ckpt.list_steps(ckpt.checkpoint_dir(run_dir)):
        return "resume"
    return "restart" if (run_dir / "metrics.jsonl").exists() else "new"


def prepare_data(configs: list[RunConfig], *, progress: bool) -> None:
    """Tokenize each distinct corpus once, up front, with its own progress (inside the runs the
    compare's bar is the only one; the runs then find the token cache ready)."""
    from steplab.data.cache import prepare

    seen = set()
    for cfg in configs:
        key = repr((cfg.data, cfg.tokenizer))
        if key not in seen:
            seen.add(key)
            prepare(cfg.data, cfg.tokenizer, progress=progress)


def run_dir_of(out: Path, v: Variant, seed: int) -> Path:
    return out / "runs" / v.slug / f"seed-{seed}"


class RunProgress(Callback):
    """Moves the compare's bar while one run trains: `done` finished runs plus this one's share."""

    def __init__(self, view: ProgressView, cfg: RunConfig, done: int, what: str):
        self.view, self.cfg, self.done, self.what = view, cfg, done, what

    def on_log(self, s: Session, state: TrainState, record: dict[str, Any]) -> None:
        self.view.update(
            self.done + min(1.0, progress_of(self.cfg, state)), f"{self.what}  loss {record['loss']:.3f}"
        )

    def on_eval(self, s: Session, state: TrainState, record: dict[str, Any]) -> None:
        loss = record.get("val_loss")
        text = f"val {loss:.3f}" if isinstance(loss, float) else "val -"
        self.view.update(self.done + min(1.0, progress_of(self.cfg, state)), f"{self.what}  {text}")


def train_one(
    plan: Plan, out: Path, v: Variant, seed: int, *, overwrite: bool, view: ProgressView, done: int
) -> str:
    """Train (or resume) one planned run; returns its status."""
    run_dir, cfg = run_dir_of(out, v, seed), copy.deepcopy(plan.configs[v.label, seed])
    cfg.train.progress = False  # the compare's bar stands for the run's (one live display at a time)
    state = "new" if overwrite else run_state(run_dir)
    what = f"{v.label} seed {seed}"
    resuming = "  (resuming)" if state == "resume" else ""
    view.line(f"compare [{done + 1}/{view.total:g}] {what}  lr {cfg.optim.lr:g}{resuming}  {view.eta(done)}")
    t0 = time.perf_counter()
    result = train(
        cfg,
        run_dir,
        resume=state == "resume",
        overwrite=overwrite or state == "restart",
        callbacks=[RunProgress(view, cfg, done, what)],
        progress=False,
    )
    loss = result.final.get("val_loss")
    val = f"val loss {loss:.4f}" if isinstance(loss, float) else "no val loss"
    view.line(
        f"compare [{done + 1}/{view.total:g}] {what}: {result.status}, {val}, {fmt_duration(time.perf_counter() - t0)}"
    )
    view.update(done + 1, what)
    return result.status


def compare(
    plan: Plan,
    out: Path,
    *,
    target: float | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> Comparison:
    """Train every planned run that is not done yet and read all results back.

    The report (``compare.md``, ``results.json``, plots) is written by
    `steplab.reports.compare.write_report`, from what this returns.
    """
    out.mkdir(parents=True, exist_ok=True)
    runs = [(v, seed) for v in plan.variants for seed in plan.seeds]
    if not overwrite:
        for v, seed in runs:
            check_same_config(run_dir_of(out, v, seed), plan.configs[v.label, seed])
    todo = [(v, s) for v, s in runs if overwrite or run_state(run_dir_of(out, v, s)) != "done"]
    n_done = len(runs) - len(todo)
    if not quiet:
        header = f"{plural(len(plan.variants), 'variant')} x {plural(len(plan.seeds), 'seed')}"
        print(
            f"compare: {header} = {plural(len(runs), 'run')}; {n_done} done; {out}",
            file=sys.stderr,
            flush=True,
        )
    prepare_data([plan.configs[v.label, s] for v, s in todo], progress=not quiet)
    view = ProgressView(len(runs), "runs", enabled=not quiet, label="compare", start=n_done)
    status = "finished"
    try:
        for i, (v, seed) in enumerate(todo):
            if (
                train_one(plan, out, v, seed, overwrite=overwrite, view=view, done=n_done + i)
                == "interrupted"
            ):
                status = "interrupted"
                view.line("compare interrupted: run the same command again to continue where it stopped")
                break
    finally:
        view.close()
    results = [
        read_run(
            run_dir_of(out, v, seed),
            label=v.label,
            seed=seed,
            lr=float(plan.configs[v.label, seed].optim.lr),
            lr_source=plan.lr_sources[v.label],
            target=target,
        )
        for v, seed in runs
        if (run_dir_of(out, v, seed) / "summary.json").exists()
    ]
    return Comparison(plan, out, aggregate(results), results, status, target)
