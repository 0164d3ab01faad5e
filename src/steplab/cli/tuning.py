"""Finding hyperparameters: `steplab lr-find`, `steplab batch-find`, `steplab tune`.

The work is `steplab.tools.lr_find`, `.batch_find` and `.tune`; these commands read their
options, run it and print what to do next.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from steplab.atomic import write_file
from steplab.cli.options import CHECKPOINTS, Command, ConfigOptions
from steplab.config import SECTIONS, RunConfig, dump_toml, opt
from steplab.errors import SteplabError
from steplab.rundir import named_run_dir

if TYPE_CHECKING:
    from steplab.tools.batch_find import BatchFindResult

# The sections a model-measuring command reads (no evaluation, checkpoints or guard).
MEASURING = ("model", "data", "tokenizer", "optim", "train")


def stamp(*parts: str) -> str:
    return "-".join([*parts, time.strftime("%Y%m%d-%H%M%S")])


def resolve_auto_lr(cfg: RunConfig) -> None:
    """`--optim.lr auto` outside `train`: run the range test once, up front."""
    if isinstance(cfg.optim.lr, str):
        from steplab.tools.lr_find import resolve_auto_lr as run_range_test

        run_range_test(cfg)


# --- lr-find ---------------------------------------------------------------------------------


@dataclass(kw_only=True)
class LrFindOptions(ConfigOptions):
    """Learning-rate range test: suggest --optim.lr for this config (JSON and PNG)."""

    steps: int = opt(100, "steps of the exponential ramp", ge=10)
    lr_min: float = opt(1e-7, "first learning rate", gt=0)
    lr_max: float = opt(10.0, "last learning rate", gt=0)
    rule: Literal["steepest", "min10"] = opt("steepest", "which suggestion to recommend")
    out: str | None = opt(
        None,
        "directory for lr_find.json and lr_find.png (none: runs/lr-find/PRESET-OPTIM-TIME)",
        metavar="DIR",
    )


def cmd_lr_find(opts: LrFindOptions, cfg: RunConfig) -> int:
    from steplab.tools.lr_find import lr_find, write_result

    res = lr_find(cfg, steps=opts.steps, lr_min=opts.lr_min, lr_max=opts.lr_max, rule=opts.rule)
    out = Path(opts.out) if opts.out else Path("runs") / "lr-find" / stamp(cfg.preset, cfg.optim.name)
    js, png = write_result(res, out)
    sug = res.suggestion
    where = f"diverged at lr {res.diverged_at:.3g}" if res.diverged_at else res.stopped
    print(f"lr-find: {cfg.optim.name}, {len(res.lrs)} steps from {res.lr_min:g} ({where})")
    print(
        f"suggested lr {sug.lr:.3g} ({sug.rule} rule); min/10 {sug.min10:.3g}, "
        f"steepest descent {sug.steepest:.3g}, loss minimum at {sug.minimum:.3g}"
    )
    if sug.note:
        print(f"note: {sug.note}")
    print(f"wrote {js} and {png}")
    print(f"next: steplab train --optim {cfg.optim.name} --optim.lr {sug.lr:.3g}  (or --optim.lr auto)")
    return 0


# --- batch-find ------------------------------------------------------------------------------


@dataclass(kw_only=True)
class BatchFindOptions(ConfigOptions):
    """Critical batch size (gradient noise scale) and the largest micro-batch that fits."""

    run: str | None = opt(
        None,
        "measure at this run's checkpoint (its model and data) instead of after training",
        positional=True,
        metavar="RUN",
    )
    checkpoint: CHECKPOINTS = opt("latest", "which checkpoint of RUN")
    warmup_steps: int = opt(50, "train this many steps before measuring (without RUN)", ge=0)
    rounds: int = opt(8, "measurement rounds (the error bar's samples)", ge=1)
    micro_batches: int = opt(4, "micro-batches per round (two batch sizes are needed)", ge=2)
    global_batch: int | None = opt(None, "sequences per step to plan for (none: the critical batch)", ge=1)
    memory_fraction: float = opt(0.8, "share of free host memory to use (CPU)", gt=0, le=1)
    out: str | None = opt(None, "write the result as JSON here", metavar="FILE")


def cmd_batch_find(opts: BatchFindOptions, cfg: RunConfig) -> int:
    from steplab import checkpoint as ckpt
    from steplab.tools.batch_find import batch_find

    resolve_auto_lr(cfg)
    weights = None
    if opts.run:
        run_dir = Path(opts.run)
        if not run_dir.exists():
            raise SteplabError(f"RUN: {run_dir} does not exist")
        loaded = ckpt.load(ckpt.latest(run_dir, which=opts.checkpoint), with_optimizer=False)
        # the run's model, corpus and tokenizer; this command's batch and measurement settings
        cfg.model, cfg.data, cfg.tokenizer = loaded.cfg.model, loaded.cfg.data, loaded.cfg.tokenizer
        weights = loaded.weights
    res = batch_find(
        cfg,
        warmup_steps=opts.warmup_steps,
        rounds=opts.rounds,
        micro_batches=opts.micro_batches,
        global_batch=opts.global_batch,
        weights=weights,
        fraction=opts.memory_fraction,
    )
    print_batch_find(res, opts)
    if opts.out:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        write_file(opts.out, json.dumps(res.to_json(), indent=1, default=str))
        print(f"wrote {opts.out}")
    return 0


def print_batch_find(res: BatchFindResult, opts: BatchFindOptions) -> None:
    n, m = res.noise, res.memory
    at = f"at {opts.run}" if opts.run else f"after {res.trained_steps} training steps"
    if math.isfinite(n.b_simple):
        print(
            f"gradient noise scale B_simple = {n.b_simple:.1f} sequences (68% interval {n.low:.1f} to "
            f"{n.high:.1f}) = {n.b_simple * res.block_size:,.0f} tokens, {at}"
        )
    else:
        print(
            f"gradient noise scale: |G|² not resolved from noise ({at}); use more --rounds or --micro-batches"
        )
    print(f"  from {n.rounds} rounds of {opts.micro_batches} micro-batches of {res.batch_size} sequences")
    if m.method == "trial":
        print(f"largest micro-batch: {m.max_micro_batch} sequences (found by trial on the GPU)")
    else:
        d = m.detail
        capped = " (the search's cap)" if d["uncapped"] > m.max_micro_batch else ""
        print(
            f"largest micro-batch: {m.max_micro_batch} sequences{capped} (estimate: {d['bytes_per_sequence'] / 2**20:.1f} "
            f"MiB per sequence at the peak of a step, {d['available_bytes'] / 2**30:.1f} GiB available "
            f"x {opts.memory_fraction})"
        )
    print(
        f"global batch {res.global_batch} sequences -> --train.batch-size {res.micro_batch} "
        f"--train.grad-accum {res.grad_accum}"
    )


# --- tune ------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class TuneOptions(ConfigOptions):
    """Hyperparameter search on Optuna (resumable, multi-worker); the best config as TOML.

    Every trial trains the resolved config with the sampled values: its budget is the
    config's (--train.max-steps, --train.max-tokens, --train.max-seconds, per trial).
    """

    space: str = opt(
        MISSING, "search space TOML ([optim.lr] type='log_float' low=.. high=..)", metavar="FILE"
    )
    trials: int = opt(20, "finished trials the study should hold, all workers together", ge=1)
    workers: int = opt(1, "local worker processes (journal or postgresql storage)", ge=1)
    storage: str | None = opt(
        None,
        "journal file path, sqlite:///FILE, or postgresql://USER@HOST:PORT/DB for workers on "
        "many machines (none: STUDY_DIR/journal.log)",
    )
    study: str | None = opt(None, "study name (none: PRESET-SPACE)")
    dir: str | None = opt(None, "study directory (none: runs/tune/STUDY)", metavar="DIR")
    sampler: str = opt("tpe", "tpe or random")
    pruner: str = opt("median", "median, halving or none")
    seed: int = opt(0, "sampler seed")
    top: int = opt(5, "rows of the best-trials table", ge=1)
    keep_checkpoints: bool = opt(False, "keep each trial's final checkpoint")
    quiet: bool = opt(False, "no per-trial log lines")


def cmd_tune(opts: TuneOptions, cfg: RunConfig) -> int:
    from steplab.reports.document import Table, print_table
    from steplab.tools.tune import TuneSpec, best_table, counts, load_space, run_study, write_outputs

    space = load_space(opts.space)
    if not any(p.key == "optim.lr" for p in space):
        resolve_auto_lr(cfg)
    name = opts.study or f"{cfg.preset}-{Path(opts.space).stem}"
    study_dir = Path(opts.dir) if opts.dir else named_run_dir(Path("runs") / "tune", name, flag="--study")
    spec = TuneSpec(
        base_toml=dump_toml(cfg.validate()),
        space=space,
        study_name=name,
        study_dir=str(study_dir),
        storage=opts.storage,
        trials=opts.trials,
        sampler=opts.sampler,
        pruner=opts.pruner,
        seed=opts.seed,
        workers=opts.workers,
        keep_checkpoints=opts.keep_checkpoints,
    )
    if cfg.eval.every == 0 and opts.pruner != "none":
        print("note: --eval.every is 0, so trials report no intermediate loss and none is pruned")
    study = run_study(spec, quiet=opts.quiet)
    print(counts(study))
    print_table(Table(*best_table(study, opts.top)))
    written = write_outputs(study, spec)
    for what, path in written.items():
        print(f"wrote {what}: {path}")
    if "best" in written:
        print(f"next: steplab train --config {written['best']}")
    return 0


LR_FIND = Command("lr-find", LrFindOptions, cmd_lr_find, sections=MEASURING)
BATCH_FIND = Command(
    "batch-find",
    BatchFindOptions,
    cmd_batch_find,
    sections=("model", "data", "tokenizer", "optim", "schedule", "train"),
)
TUNE = Command("tune", TuneOptions, cmd_tune, sections=tuple(SECTIONS))
