"""`steplab auto`: the command (the work is `steplab.auto`)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from steplab.cli.options import Command, ConfigOptions
from steplab.config import RunConfig, opt
from steplab.errors import SteplabError


@dataclass(kw_only=True)
class AutoOptions(ConfigOptions):
    """The best model for a corpus and a compute budget, chosen by experiment.

    Decides the tokenizer, optimizer and learning rate, model size, batch and schedule by
    short measured runs (at most --search-fraction of the budget), then trains the final
    model with the rest and writes decisions.md, report.html and best.toml beside it.
    Only the data settings (--data, --data.*) are read from the config.
    """

    budget: str | None = opt(None, "wall time on this machine, e.g. 300s, 10m, 2h, 1d", metavar="TIME")
    budget_flops: float | None = opt(
        None, "training FLOPs instead of wall time, e.g. 1e15", gt=0, metavar="FLOPS"
    )
    search_fraction: float = opt(0.25, "share of the budget spent deciding", gt=0, lt=1)
    run_dir: str | None = opt(None, "run directory (none: runs/auto/TIMESTAMP)", metavar="DIR")
    resume: str | None = opt(None, "continue a killed or interrupted run", metavar="DIR")
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    seed: int = opt(1337, "seed of every proxy and of the final run")
    quiet: bool = opt(False, "no progress output")


def cmd_auto(opts: AutoOptions, cfg: RunConfig) -> int:
    from steplab.auto.budget import Budget, parse_duration, process_age
    from steplab.auto.run import resume, start

    progress = not opts.quiet
    if opts.resume:
        if opts.budget or opts.budget_flops or opts.run_dir:
            raise SteplabError(
                "--resume DIR continues a run with its own data and budget: give no other settings"
            )
        res = resume(Path(opts.resume), progress=progress, spent=process_age())
    else:
        if not opts.budget and not opts.budget_flops:
            raise SteplabError("steplab auto needs a budget: --budget 10m (wall time) or --budget-flops 1e15")
        if opts.budget and opts.budget_flops:
            raise SteplabError("--budget and --budget-flops: choose one")
        budget = (
            Budget("seconds", parse_duration(opts.budget), opts.search_fraction)
            if opts.budget
            else Budget("flops", float(opts.budget_flops or 0), opts.search_fraction)
        )
        if cfg.data.path and not Path(cfg.data.path).exists():
            raise SteplabError(
                f"--data: {cfg.data.path} does not exist (steplab never downloads: give a local path)"
            )
        run_dir = (
            Path(opts.run_dir) if opts.run_dir else Path("runs") / "auto" / time.strftime("%Y%m%d-%H%M%S")
        )
        res = start(
            cfg.data,
            budget,
            run_dir,
            device=opts.device,
            seed=opts.seed,
            progress=progress,
            spent=process_age(),
        )
    f = res.state.final
    if "val_bpb" in f:
        print(
            f"{res.status}: val_loss {f['val_loss']:.4f}, {f['val_bpb']:.4f} bits/byte after "
            f"{f.get('total_seconds', 0):.0f} s in all"
        )
    d = res.run_dir
    print(f"run: {d}   decisions: {d / 'decisions.md'}   replay: steplab train --config {d / 'best.toml'}")
    return 0 if res.status in ("finished", "target") else 1


AUTO = Command("auto", AutoOptions, cmd_auto, sections=("data",))
