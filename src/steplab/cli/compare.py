"""`steplab compare`: the command (the work is `steplab.tools.compare`)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from steplab.cli.options import Command, ConfigOptions
from steplab.config import SECTIONS, RunConfig, opt


@dataclass(kw_only=True)
class CompareOptions(ConfigOptions):
    """Train variants (optimizers, architectures, ...) on the same data, seeds and budget; rank them.

    Every variant (the cartesian product of the --vary settings, plus any named --variant) is
    trained once per seed with the same budget, the config's (--train.max-steps,
    --train.max-tokens, --train.max-seconds, per run). Each run is a normal run directory under
    the compare directory; running the same command again skips finished runs and resumes
    interrupted ones. When the optimizer varies, each variant gets its optimizer's default
    learning rate unless --optim.lr is given or optim.lr is varied.
    """

    vary: list[str] = opt(
        [],
        "a setting and its values, e.g. optim.name=adamw,muon (repeatable: the cartesian product)",
        metavar="KEY=V1,V2",
    )
    variant: list[list[str]] = opt(
        [],
        "one more named row with its settings, e.g. seed_adamw optim.name=adamw optim.lr=1e-3 (repeatable)",
        metavar="NAME KEY=VALUE",
    )
    seeds: int = opt(1, "seeds per variant: the config's seed, +1, +2, ...", ge=1)
    target_loss: float | None = opt(
        None,
        "report time and tokens to this validation loss (runs go on; --train.target-loss stops them)",
        gt=0,
    )
    out: str | None = opt(None, "compare directory (none: runs/compare-PRESET-HASH)", metavar="DIR")
    overwrite: bool = opt(False, "retrain every run instead of resuming")
    quiet: bool = opt(False, "no per-run progress output")


def cmd_compare(opts: CompareOptions, cfg: RunConfig) -> int:
    from steplab.reports.compare import results_table, write_report
    from steplab.reports.document import print_table
    from steplab.tools.compare import (
        Budget,
        compare,
        default_out,
        make_plan,
        parse_variant,
        parse_vary,
        plan_variants,
    )

    variants = plan_variants(parse_vary(opts.vary), [parse_variant(v) for v in opts.variant])
    plan = make_plan(
        cfg,
        variants,
        seeds=opts.seeds,
        budget=Budget(),  # every run keeps the config's budget (--train.max-*)
        lr_fixed="optim.lr" in opts.settings,
        target=opts.target_loss,
    )
    out = Path(opts.out) if opts.out else default_out(cfg, plan)
    command = "steplab " + shlex.join(opts.argv) if opts.argv else "steplab compare (from Python)"
    result = compare(plan, out, target=opts.target_loss, overwrite=opts.overwrite, quiet=opts.quiet)
    if result.rows:
        written = write_report(result, command=command)
        print_table(results_table(result.rows, opts.target_loss))
        print(f"report: {written['markdown']}")
    return 130 if result.status == "interrupted" else 0


COMPARE = Command("compare", CompareOptions, cmd_compare, sections=tuple(SECTIONS))
