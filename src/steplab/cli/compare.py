"""`steplab compare`: the command (the work is `steplab.tools.compare`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from steplab.errors import ConfigError
from steplab.tools.compare import (
    Budget,
    compare,
    default_out,
    make_plan,
    parse_variant,
    parse_vary,
    plan_variants,
    table,
)
from steplab.tools.compare import __doc__ as compare_doc

# --- the command -------------------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    from steplab.cli.main import config_from_args

    base = config_from_args(args)
    variants = plan_variants(parse_vary(args.vary or []), [parse_variant(t) for t in args.variant or []])
    budget = Budget(
        steps=args.budget_steps,
        tokens=int(args.budget_tokens) if args.budget_tokens is not None else None,
        seconds=args.budget_seconds,
    )
    for name, value in (("steps", budget.steps), ("tokens", budget.tokens), ("seconds", budget.seconds)):
        if value is not None and value <= 0:
            raise ConfigError(f"--budget-{name} must be > 0 (got {value:g})")
    if args.target_loss is not None and args.target_loss <= 0:
        raise ConfigError(f"--target-loss must be > 0 (got {args.target_loss:g})")
    plan = make_plan(
        base,
        variants,
        seeds=args.seeds,
        budget=budget,
        lr_fixed=hasattr(args, "cfg:optim.lr"),
        target=args.target_loss,
    )
    out = Path(args.out) if args.out else default_out(base, plan)
    cli_argv = sys.argv[2:] if sys.argv[1:2] == ["compare"] else None
    command = "steplab compare " + (shlex.join(cli_argv) if cli_argv is not None else "(from Python)")
    rows, status = compare(
        plan, out, target=args.target_loss, overwrite=args.overwrite, quiet=args.quiet, command=command
    )
    if rows:
        print(table(rows, args.target_loss))
        print(f"report: {out / 'compare.md'}")
    return 130 if status == "interrupted" else 0


def register_cli(sub: Any, commands: dict[str, Any]) -> None:
    from steplab.cli.main import add_config_flags

    p = sub.add_parser(
        "compare",
        help="train variants (optimizers, architectures, ...) on the same data, seeds and budget; rank them",
        description=compare_doc.split("\n\n")[1],
    )
    add_config_flags(p)
    g = p.add_argument_group("compare")
    g.add_argument(
        "--vary",
        action="append",
        metavar="KEY=V1,V2",
        help="a setting and its values (repeatable: the cartesian product), e.g. optim.name=adamw,muon",
    )
    g.add_argument(
        "--variant",
        action="append",
        nargs="+",
        metavar=("NAME", "KEY=VALUE"),
        help="one more named row with its settings, e.g. --variant seed_adamw optim.name=adamw optim.lr=1e-3",
    )
    g.add_argument("--budget-seconds", type=float, default=None, metavar="S", help="training seconds per run")
    g.add_argument(
        "--budget-tokens", type=float, default=None, metavar="N", help="training tokens per run (2e6 is fine)"
    )
    g.add_argument("--budget-steps", type=int, default=None, metavar="N", help="optimizer steps per run")
    g.add_argument(
        "--seeds", type=int, default=1, metavar="N", help="seeds per variant: the config's seed, +1, +2, ..."
    )
    g.add_argument(
        "--target-loss",
        type=float,
        default=None,
        metavar="LOSS",
        help="report time and tokens to this val loss",
    )
    g.add_argument(
        "--out", default=None, metavar="DIR", help="compare directory (default: runs/compare-PRESET-HASH)"
    )
    g.add_argument("--overwrite", action="store_true", help="retrain every run instead of resuming")
    g.add_argument("--quiet", action="store_true", help="no per-run progress output")
    commands["compare"] = cmd_compare
