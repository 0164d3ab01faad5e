"""Commands: lr-find, batch-find, tune, coord-check, transfer."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from steplab.config import dump_toml, load_toml
from steplab.errors import SteplabError


def _stamp(*parts: str) -> str:
    return "-".join([*parts, time.strftime("%Y%m%d-%H%M%S")])


def _resolve_auto_lr(cfg: Any, *, skip: bool = False) -> None:
    """`--optim.lr auto` outside `train`: run the range test once, up front."""
    if isinstance(cfg.optim.lr, str) and not skip:
        from steplab.tools.lr_find import resolve_auto_lr

        resolve_auto_lr(cfg)


def _widths(text: str) -> list[int]:
    try:
        return [int(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers (got {text!r})") from None


# --- lr-find ---------------------------------------------------------------------------------


def cmd_lr_find(args: argparse.Namespace) -> int:
    from steplab.cli.main import config_from_args
    from steplab.tools.lr_find import lr_find, write_result

    cfg = config_from_args(args)
    res = lr_find(cfg, steps=args.steps, lr_min=args.lr_min, lr_max=args.lr_max, rule=args.rule)
    out = Path(args.out) if args.out else Path("runs") / "lr-find" / _stamp(cfg.preset, cfg.optim.name)
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


def cmd_batch_find(args: argparse.Namespace) -> int:
    from steplab import checkpoint as ckpt
    from steplab.cli.main import config_from_args
    from steplab.tools.batch_find import batch_find

    cfg = config_from_args(args)
    _resolve_auto_lr(cfg)
    weights = None
    if args.run:
        run_dir = Path(args.run)
        if not run_dir.exists():
            raise SteplabError(f"--run: {run_dir} does not exist")
        loaded = ckpt.load(ckpt.latest(run_dir, which=args.checkpoint), with_optimizer=False)
        # the run's model, corpus and tokenizer; this command's batch and measurement settings
        cfg.model, cfg.data, cfg.tokenizer = loaded.cfg.model, loaded.cfg.data, loaded.cfg.tokenizer
        weights = loaded.weights
    res = batch_find(
        cfg,
        warmup_steps=args.warmup_steps,
        rounds=args.rounds,
        micro_batches=args.micro_batches,
        global_batch=args.global_batch,
        weights=weights,
        fraction=args.memory_fraction,
    )
    n, m = res.noise, res.memory
    at = f"at {args.run}" if args.run else f"after {res.trained_steps} training steps"
    if math.isfinite(n.b_simple):
        print(
            f"gradient noise scale B_simple = {n.b_simple:.1f} sequences (68% interval {n.low:.1f} to "
            f"{n.high:.1f}) = {n.b_simple * res.block_size:,.0f} tokens, {at}"
        )
    else:
        print(
            f"gradient noise scale: |G|² not resolved from noise ({at}); use more --rounds or --micro-batches"
        )
    print(f"  from {n.rounds} rounds of {args.micro_batches} micro-batches of {res.batch_size} sequences")
    if m.method == "trial":
        print(f"largest micro-batch: {m.max_micro_batch} sequences (found by trial on the GPU)")
    else:
        d = m.detail
        capped = " (the search's cap)" if d["uncapped"] > m.max_micro_batch else ""
        print(
            f"largest micro-batch: {m.max_micro_batch} sequences{capped} (estimate: {d['bytes_per_sequence'] / 2**20:.1f} "
            f"MiB per sequence at the peak of a step, {d['available_bytes'] / 2**30:.1f} GiB available "
            f"x {args.memory_fraction})"
        )
    print(
        f"global batch {res.global_batch} sequences -> --train.batch-size {res.micro_batch} "
        f"--train.grad-accum {res.grad_accum}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res.to_json(), indent=1, default=str))
        print(f"wrote {args.out}")
    return 0


# --- tune ------------------------------------------------------------------------------------


def cmd_tune(args: argparse.Namespace) -> int:
    from steplab.cli.main import config_from_args
    from steplab.tools.tune import TuneSpec, load_space, run_study, table, write_outputs

    cfg = config_from_args(args)
    if args.budget_seconds is not None and args.budget_steps is not None:
        raise SteplabError("--budget-seconds and --budget-steps: choose one")
    if args.budget_seconds is not None:
        if args.budget_seconds <= 0:
            raise SteplabError(f"--budget-seconds must be > 0 (got {args.budget_seconds})")
        cfg.train.max_steps, cfg.train.max_tokens, cfg.train.max_seconds = None, None, args.budget_seconds
    if args.budget_steps is not None:
        if args.budget_steps < 1:
            raise SteplabError(f"--budget-steps must be >= 1 (got {args.budget_steps})")
        cfg.train.max_steps, cfg.train.max_tokens, cfg.train.max_seconds = args.budget_steps, None, None
    if args.trials < 1 or args.workers < 1:
        raise SteplabError("--trials and --workers must be >= 1")
    space = load_space(args.space)
    _resolve_auto_lr(cfg, skip=any(p.key == "optim.lr" for p in space))
    name = args.study or f"{cfg.preset}-{Path(args.space).stem}"
    study_dir = Path(args.dir) if args.dir else Path("runs") / "tune" / name
    spec = TuneSpec(
        base_toml=dump_toml(cfg.validate()),
        space=space,
        study_name=name,
        study_dir=str(study_dir),
        storage=args.storage,
        trials=args.trials,
        sampler=args.sampler,
        pruner=args.pruner,
        seed=args.seed,
        workers=args.workers,
        keep_checkpoints=args.keep_checkpoints,
    )
    if cfg.eval.every == 0 and args.pruner != "none":
        print("note: --eval.every is 0, so trials report no intermediate loss and none is pruned")
    study = run_study(spec, quiet=args.quiet)
    print(table(study, args.top))
    written = write_outputs(study, spec)
    for what, path in written.items():
        print(f"wrote {what}: {path}")
    if "best" in written:
        print(f"next: steplab train --config {written['best']}")
    return 0


# --- coord-check -----------------------------------------------------------------------------


def cmd_coord_check(args: argparse.Namespace) -> int:
    from steplab.cli.main import config_from_args
    from steplab.tools.mup import check_widths, coord_check, plot_coord_checks, slopes

    cfg = config_from_args(args)
    _resolve_auto_lr(cfg, skip=args.lr is not None)
    widths = check_widths(args.widths, cfg.model.n_head)
    kinds = ["sp", "mup"] if args.parametrization == "both" else [args.parametrization]
    checks, data = [], None
    for kind in kinds:
        c = coord_check(cfg, widths, parametrization=kind, steps=args.steps, lr=args.lr, data=data)
        checks.append(c)
        sl = slopes(c)
        worst = max(sl, key=lambda k: abs(sl[k]))
        print(
            f"{kind:4s} log2(RMS) per doubling of width at step {args.steps}: "
            + "  ".join(f"{k} {v:+.2f}" for k, v in sl.items())
        )
        print(f"     largest: {worst} {sl[worst]:+.2f} (0 = flat in width)")
    out = Path(args.out) if args.out else Path("runs") / "coord-check" / _stamp(cfg.preset)
    out.mkdir(parents=True, exist_ok=True)
    plot_coord_checks(checks, out / "coord_check.png")
    (out / "coord_check.json").write_text(
        json.dumps([{**c.__dict__, "slopes": slopes(c)} for c in checks], indent=1)
    )
    print(f"wrote {out / 'coord_check.png'} and {out / 'coord_check.json'}")
    return 0


# --- transfer --------------------------------------------------------------------------------


def cmd_transfer(args: argparse.Namespace) -> int:
    from steplab.tools.mup import group_lrs, scaled_config

    src = Path(getattr(args, "from"))
    cfg = load_toml(src)
    new = scaled_config(cfg, args.width)
    out = Path(args.out) if args.out else src.with_name(f"{src.stem}-w{args.width}.toml")
    m = new.model
    print(
        f"{src}: width {cfg.model.n_embd} ({cfg.model.parametrization}) -> {m.n_embd} under muP, "
        f"base width {m.mup_base_width}, {m.n_head} heads of {m.head_dim}"
    )
    before, after = group_lrs(cfg), group_lrs(new)
    for k in after:
        print(f"  {k:7s} lr {before.get(k, float('nan')):.3g} -> {after[k]:.3g}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# steplab transfer --from {src} --width {args.width}\n" + dump_toml(new))
    print(f"wrote {out}   next: steplab train --config {out}")
    return 0


# --- registration ----------------------------------------------------------------------------


def register_cli(sub: Any, commands: dict[str, Any]) -> None:
    from steplab.cli.main import add_config_flags

    p = sub.add_parser("lr-find", help="learning-rate range test: suggest --optim.lr for this config")
    add_config_flags(p)
    p.add_argument("--steps", type=int, default=100, help="steps of the exponential ramp (default: 100)")
    p.add_argument("--lr-min", type=float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--lr-max", type=float, default=10.0, help="last learning rate (default: 10)")
    p.add_argument(
        "--rule", choices=["steepest", "min10"], default="steepest", help="which suggestion to recommend"
    )
    p.add_argument("--out", default=None, help="directory for lr_find.json and lr_find.png")
    commands["lr-find"] = cmd_lr_find

    p = sub.add_parser(
        "batch-find", help="critical batch size (gradient noise scale) and the largest micro-batch"
    )
    add_config_flags(p)
    p.add_argument("--warmup-steps", type=int, default=50, help="train this many steps before measuring")
    p.add_argument("--run", default=None, help="measure at a run's checkpoint instead")
    p.add_argument("--checkpoint", choices=["latest", "best"], default="latest")
    p.add_argument("--rounds", type=int, default=8, help="measurement rounds (the error bar's samples)")
    p.add_argument("--micro-batches", type=int, default=4, help="micro-batches per round (>= 2)")
    p.add_argument("--global-batch", type=int, default=None, help="sequences per step to plan for")
    p.add_argument(
        "--memory-fraction", type=float, default=0.8, help="share of free host memory to use (CPU)"
    )
    p.add_argument("--out", default=None, help="write the result as JSON here")
    commands["batch-find"] = cmd_batch_find

    p = sub.add_parser("tune", help="hyperparameter search on Optuna (resumable, multi-worker)")
    add_config_flags(p)
    p.add_argument(
        "--space", required=True, help="search space TOML ([optim.lr] type='log_float' low=.. high=..)"
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="finished trials the study should hold, all workers together (default: 20)",
    )
    p.add_argument("--budget-seconds", type=float, default=None, help="training seconds per trial")
    p.add_argument("--budget-steps", type=int, default=None, help="optimizer steps per trial")
    p.add_argument(
        "--storage",
        default=None,
        help="journal file path (default: STUDY_DIR/journal.log), sqlite:///FILE, or "
        "postgresql://USER@HOST:PORT/DB for workers on many machines",
    )
    p.add_argument("--study", default=None, help="study name (default: PRESET-SPACE)")
    p.add_argument("--dir", default=None, help="study directory (default: runs/tune/STUDY)")
    p.add_argument(
        "--workers", type=int, default=1, help="local worker processes on the journal or postgresql storage"
    )
    p.add_argument("--sampler", default="tpe", help="tpe or random")
    p.add_argument("--pruner", default="median", help="median, halving or none")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--top", type=int, default=5, help="rows of the best-trials table")
    p.add_argument("--keep-checkpoints", action="store_true", help="keep each trial's final checkpoint")
    p.add_argument("--quiet", action="store_true", help="no per-trial log lines")
    commands["tune"] = cmd_tune

    p = sub.add_parser("coord-check", help="muP coordinate check: activation scale per layer vs width")
    add_config_flags(p)
    p.add_argument("--widths", type=_widths, default=[64, 128, 256, 512], help="comma-separated widths")
    p.add_argument("--steps", type=int, default=5, help="training steps per width")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: --optim.lr)")
    p.add_argument("--parametrization", choices=["both", "sp", "mup"], default="both")
    p.add_argument("--out", default=None, help="directory for coord_check.png and .json")
    commands["coord-check"] = cmd_coord_check

    p = sub.add_parser("transfer", help="move a tuned config to another width with muP")
    p.add_argument("--from", required=True, metavar="FILE", help="a tuned config TOML (e.g. best.toml)")
    p.add_argument("--width", type=int, required=True, help="the new model width (n_embd)")
    p.add_argument("--out", default=None, help="output TOML (default: FILE-wWIDTH.toml)")
    commands["transfer"] = cmd_transfer
