"""What `steplab auto` leaves for the reader: decisions.md, best.toml and report.html.

Every decision becomes a report section (the same pieces `steplab report` renders), in the
order taken: the choice, the reason, the evidence table, a plot where there is one, the
commands that reproduce it. `best.toml` is the final run's config with its budget as the
number of steps it trained, so `steplab train --config best.toml` replays it without the
search (on any machine: a step budget does not depend on the machine's speed).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING

from steplab.atomic import write_file
from steplab.auto.budget import fmt_seconds
from steplab.auto.state import Decision
from steplab.config import dump_toml
from steplab.reports.report import Section, Table, build_report, render_markdown

if TYPE_CHECKING:
    from steplab.auto.context import Context


def decision_section(i: int, d: Decision, root: Path) -> Section:
    spent = f"{fmt_seconds(d.seconds)} of wall time" + (
        f", {d.cost:.3g} FLOPs" if d.cost and d.cost > 1e6 else ""
    )
    how = {"measured": "measured", "fallback": "fallback (not measured)", "rule": "rule"}[d.rule]
    text = [f"Chosen: {d.title.split(': ', 1)[-1]} — {d.reason}.", f"How: {how}; cost: {spent}."]
    if d.choice:
        text.append(
            "Settings: " + ", ".join(f"--{k.replace('_', '-')} {_fmt(v)}" for k, v in d.choice.items()) + "."
        )
    text += d.notes
    table = (
        Table(headers=[str(c) for c in d.table[0]], rows=[[str(c) for c in r] for r in d.table[1:]])
        if d.table
        else None
    )
    blocks = [("reproduce", "\n".join(d.commands))] if d.commands else []
    images = [root / d.plot] if d.plot and (root / d.plot).exists() else []
    return Section(title=f"{i}. {d.title}", text="\n\n".join(text), table=table, images=images, blocks=blocks)


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def summary_section(ctx: Context) -> Section:
    f = ctx.state.final
    lines = [
        f"Budget: {ctx.budget.describe()}; spent {fmt_seconds(ctx.clock.seconds)} of wall time in all "
        f"({sum(d.seconds for d in ctx.state.decisions):.0f} s deciding, {f.get('train_seconds', 0):.0f} s "
        "training the final model, the rest preparing data, evaluating and reporting).",
    ]
    if "val_bpb" in f:
        lines.append(
            f"Final model: {f.get('steps')} steps, {f.get('tokens', 0):,} tokens; validation loss "
            f"{f['val_loss']:.4f}, {f['val_bpb']:.4f} bits per byte (whole validation split)."
        )
    lines.append(f"Replay without the search: steplab train --config {ctx.out / 'best.toml'}")
    return Section(title="steplab auto: summary", text="\n\n".join(lines))


def write_best_toml(ctx: Context) -> Path:
    cfg = copy.deepcopy(ctx.cfg)
    steps = ctx.state.final.get("steps")
    t = cfg.train
    if steps:
        t.max_steps, t.max_tokens, t.max_seconds = int(steps), None, None
    t.progress, t.tensorboard = True, True
    cfg.eval.every = max(1, (t.max_steps or 0) // 4) if t.max_steps else cfg.eval.every
    path = ctx.out / "best.toml"
    head = (
        f"# steplab auto ({ctx.budget.describe()}): the final run's config, its budget as the\n"
        f"# {steps} steps it trained. Replay: steplab train --config {path}\n"
    )
    write_file(path, head + dump_toml(cfg))
    return path


def write_outputs(ctx: Context) -> None:
    write_best_toml(ctx)
    sections = [summary_section(ctx)] + [
        decision_section(i, d, ctx.out) for i, d in enumerate(ctx.state.decisions, 1)
    ]
    write_file(
        ctx.out / "decisions.md",
        render_markdown("steplab auto: decisions", sections, f"run directory {ctx.out}", ctx.out),
    )
    if (ctx.out / "metrics.jsonl").exists():
        build_report(
            [ctx.out],
            ctx.out / "report.html",
            title=f"steplab auto: {ctx.out.name}",
            sections=sections,
            samples=1,
        )
    ctx.state.final["total_seconds"] = round(ctx.clock.seconds, 2)
    ctx.save()
    ctx.say(
        f"auto: done in {fmt_seconds(ctx.clock.seconds)}; wrote {ctx.out / 'decisions.md'}, "
        f"{ctx.out / 'report.html'}, {ctx.out / 'best.toml'}"
    )
