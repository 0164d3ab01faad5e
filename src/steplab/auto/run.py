"""`steplab auto`: decide by experiment, then train the final model with what is left.

The search spends at most `--search-fraction` of the budget (default 25%), in this order,
each decision taking the previous ones as given (`auto.json` keeps them all, so a killed
run resumes after the last one taken):

1. tokenizer   char / byte / BPE, bits per byte at equal time (`choose_data`)
2. optimizer   AdamW vs Muon (and Lion when affordable) and the learning rate, at the μP base
               width, lr-find first (`choose_optimizer`)
3. size        widths priced on this device, a scaling law fitted on three (`choose_size`)
4. batch       from the gradient noise scale and the measured speed per batch (`choose_batch`)
5. lr_check    the transferred learning rate checked at the final size, when affordable
6. schedule    WSD sized to the final budget

A stage gets a share of what the search has left in proportion to its weight, so an early
stage that finishes under its share leaves more to the later ones; a stage that cannot be
measured in its share falls back to a stated default. The final model is a normal run in
the same directory (`sample`, `eval`, `export`, `report` work on it); it trains for the
budget left minus a measured reserve for its evaluation and the report, so the whole
command ends on time.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from steplab.auto.budget import Budget, Clock, fmt_seconds
from steplab.auto.choose_batch import decide_batch, decide_lr_check, decide_schedule
from steplab.auto.choose_data import decide_tokenizer
from steplab.auto.choose_optimizer import decide_optimizer
from steplab.auto.choose_size import decide_size
from steplab.auto.context import Context, Tick
from steplab.auto.space import shape_name, template
from steplab.auto.state import AutoState, Decision
from steplab.auto.write import write_outputs
from steplab.config import DataConfig
from steplab.errors import SteplabError
from steplab.loop.fit import train
from steplab.progress import ProgressView

STAGES: list[tuple[str, float]] = [
    ("tokenizer", 0.25),
    ("optimizer", 0.30),
    ("size", 0.30),
    ("batch", 0.08),
    ("lr_check", 0.07),
]
REPORT_SECONDS = 8.0  # plots, one sample and the HTML report, measured on a 2-core CPU


@dataclass
class AutoResult:
    run_dir: Path
    state: AutoState
    status: str  # the final run's: finished, interrupted, diverged, ...


def start(
    data: DataConfig,
    budget: Budget,
    run_dir: Path,
    *,
    device: str = "auto",
    seed: int = 1337,
    progress: bool = True,
    spent: float = 0.0,
) -> AutoResult:
    """A new search in `run_dir` (which must not hold a run yet). `spent`: seconds already
    gone before this call that count against the budget (the CLI passes the process's age)."""
    run_dir = Path(run_dir)
    if (run_dir / "auto.json").exists() or (run_dir / "metrics.jsonl").exists():
        raise SteplabError(
            f"--run-dir {run_dir} already holds a run; continue it with: steplab auto --resume {run_dir}"
        )
    if run_dir.exists() and any(run_dir.iterdir()):
        raise SteplabError(f"--run-dir {run_dir} is not empty; choose a new or empty directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = template(data, device=device, seed=seed)
    state = AutoState(budget=asdict(budget), data=asdict(data), device=device, seed=seed)
    clock = Clock(budget, spent_seconds=spent)
    ctx = Context(run_dir, budget, clock, state, cfg, _view(budget, progress))
    ctx.save()
    return _run(ctx)


def resume(run_dir: Path, *, progress: bool = True, spent: float = 0.0) -> AutoResult:
    """Continue a killed or interrupted search from its auto.json."""
    run_dir = Path(run_dir)
    state = AutoState.load(run_dir)
    budget = Budget(**state.budget)
    clock = Clock(budget, spent_seconds=state.spent_seconds + spent, spent_flops=state.spent_flops)
    cfg = Context.restore_config(state.config) if state.config else template(DataConfig(**state.data))
    ctx = Context(run_dir, budget, clock, state, cfg, _view(budget, progress))
    ctx.say(
        f"auto: resuming {run_dir} ({fmt_seconds(clock.seconds)} spent, {len(state.decisions)} decisions taken)"
    )
    return _run(ctx)


def _view(budget: Budget, progress: bool) -> ProgressView:
    return ProgressView(100.0, "%", enabled=progress, label="auto")


def _final_allowance(ctx: Context) -> float:
    """The final run's budget as the search sees it before it ends: the total minus the search
    share and the reserve."""
    b = ctx.budget
    if b.kind == "flops":
        return max(1.0, b.total - max(b.search, ctx.clock.spent()))
    return max(1.0, b.total - max(b.search, ctx.clock.spent()) - _reserve(ctx))


def _reserve(ctx: Context) -> float:
    """Seconds kept for the final evaluation (the whole validation split), checkpoint and report."""
    speeds = ctx.state.measurements.get("speed", {})
    tps = min((s["tokens_per_second"] for s in speeds.values()), default=5_000.0)
    val_tokens = ctx.data(ctx.cfg).meta["val_tokens"]
    return REPORT_SECONDS + val_tokens / (3 * tps) + 0.01 * ctx.budget.total


def _stage(ctx: Context, name: str) -> Callable[[float], Decision]:
    final = _final_allowance(ctx)
    return {
        "tokenizer": lambda a: decide_tokenizer(ctx, a),
        "optimizer": lambda a: decide_optimizer(ctx, a),
        "size": lambda a: decide_size(ctx, a, final),
        "batch": lambda a: decide_batch(ctx, a),
        "lr_check": lambda a: decide_lr_check(ctx, a),
    }[name]


def _run(ctx: Context) -> AutoResult:
    ctx.say(
        f"auto: {ctx.budget.describe()}, at most {ctx.budget.search_fraction:.0%} of it to decide; {ctx.out}"
    )
    try:
        for i, (name, weight) in enumerate(STAGES):
            if ctx.state.decision(name):
                continue
            later = sum(w for _, w in STAGES[i:])
            allowance = max(0.0, ctx.clock.search_left()) * weight / later
            c0, s0 = ctx.clock.spent(), ctx.clock.seconds
            ctx.record(_stage(ctx, name)(allowance), c0, s0)
        if not ctx.state.decision("schedule"):
            c0, s0 = ctx.clock.spent(), ctx.clock.seconds
            ctx.record(decide_schedule(ctx, _final_allowance(ctx)), c0, s0)
        status = _train_final(ctx)
        write_outputs(ctx)
    finally:
        ctx.save()
        ctx.view.close()
    return AutoResult(ctx.out, ctx.state, status)


def _train_final(ctx: Context) -> str:
    cfg = copy.deepcopy(ctx.cfg)
    t = cfg.train
    t.max_steps, t.max_tokens, t.max_seconds = None, None, None
    if ctx.budget.kind == "seconds":
        t.max_seconds = max(1.0, ctx.clock.remaining() - _reserve(ctx))
    else:
        sp = ctx.speed(cfg)
        t.max_tokens = max(1, int(ctx.clock.remaining() / sp.flops_per_token))
    t.log_every = 25
    cfg.eval.every, cfg.eval.max_windows = 0, None
    cfg.checkpoint.every, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best = 100, 1, False
    resume = (ctx.out / "checkpoints").is_dir()
    budget = fmt_seconds(t.max_seconds) if t.max_seconds else f"{t.max_tokens:,} tokens"
    ctx.say(
        f"auto: final run: {shape_name(cfg.model.n_embd, cfg.model.n_layer)}, {budget}"
        + (" (resuming)" if resume else "")
    )
    result = train(cfg, ctx.out, resume=resume, callbacks=[Tick(ctx)], progress=False)
    if ctx.budget.kind == "flops":
        ctx.clock.flops += result.state.tokens * float(_run_info(ctx.out).get("flops_per_token") or 0.0)
    ctx.state.final = {
        "status": result.status,
        "steps": result.state.step,
        "tokens": result.state.tokens,
        "train_seconds": round(result.state.train_seconds, 2),
        **{k: v for k, v in result.final.items() if isinstance(v, (int, float))},
    }
    ctx.save()
    return result.status


def _run_info(run_dir: Path) -> dict[str, Any]:
    from steplab.rundir import read_json

    return read_json(run_dir / "run.json")
