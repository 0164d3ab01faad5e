"""`steplab train`: the command (the work is `steplab.loop.fit.train`)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from steplab.cli.options import Command, ConfigOptions
from steplab.config import SECTIONS, RunConfig, dump_toml, load_toml, opt
from steplab.errors import SteplabError
from steplab.rundir import named_run_dir as under_root


@dataclass(kw_only=True)
class TrainOptions(ConfigOptions):
    """Train a model (default: the default preset on the bundled Tiny Shakespeare).

    Every config field is a flag (--model.*, --data.*, ... below); the defaults shown are the
    preset's (--preset NAME --help shows another preset's). To extend a finished run, resume it
    with a larger budget: --run-dir DIR --resume --train.max-steps N.
    """

    run_dir: str | None = opt(None, "run directory (none: runs/NAME)", metavar="DIR")
    name: str | None = opt(None, "run name under runs/ (none: PRESET-TIMESTAMP)")
    resume: bool = opt(
        False, "continue the run in --run-dir from its newest valid checkpoint, with its own config"
    )
    overwrite: bool = opt(False, "replace an existing run in --run-dir")
    quiet: bool = opt(False, "no progress output")
    print_config: bool = opt(False, "print the resolved config as TOML and exit")
    nproc: int = opt(1, "processes on this machine (more than 1: launched under torchrun)", ge=1)


def named_run_dir(opts: TrainOptions) -> Path | None:
    return Path(opts.run_dir) if opts.run_dir else (under_root("runs", opts.name) if opts.name else None)


def resumed_config(opts: TrainOptions) -> RunConfig | None:
    """A resumed run keeps its own settings (flags still override them)."""
    named = named_run_dir(opts)
    if opts.resume and named is None:
        raise SteplabError("--resume needs the run to continue: pass --run-dir DIR (or --name NAME)")
    if opts.resume and named is not None and (named / "config.toml").is_file():
        return load_toml(named / "config.toml")
    return None


def without_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def cmd_train(opts: TrainOptions, cfg: RunConfig) -> int:
    from steplab.loop.fit import train

    if opts.print_config:
        print(dump_toml(cfg), end="")
        return 0
    if opts.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from steplab.dist import launch

        return launch(opts.nproc, without_flag(opts.argv, "--nproc"))
    run_dir = named_run_dir(opts) or Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if opts.quiet:  # also silences data preparation, which reads the config
        cfg.train.progress = False
    if isinstance(cfg.optim.lr, str):
        from steplab.tools.lr_find import resolve_auto_lr

        resolve_auto_lr(cfg, quiet=opts.quiet)
    result = train(
        cfg,
        run_dir,
        resume=opts.resume,
        overwrite=opts.overwrite,
        progress=cfg.train.progress and not opts.quiet,
    )
    f = result.final
    summary = (
        f"{result.status}: {result.state.step} steps, {result.state.tokens:,} tokens, "
        f"{result.state.train_seconds:.1f} s training"
    )
    if "val_loss" in f:
        summary += f"; val_loss {f['val_loss']:.4f}, ppl {f['val_ppl']:.2f}, bpb {f['val_bpb']:.4f}"
    print(summary)
    print(f"run: {run_dir}   next: steplab sample {run_dir}   steplab eval {run_dir}")
    return 0 if result.status in ("finished", "target", "interrupted", "stopped") else 1


TRAIN = Command("train", TrainOptions, cmd_train, sections=tuple(SECTIONS), base=resumed_config)
