"""Decision 3: the model's size and shape for the final run's budget.

Each width of the ladder is priced on this device (tokens per second of the real step);
widths too slow for a few hundred final steps are left out. Three sizes around the prior
(the default preset's ratio of about 3 tokens per parameter, at this machine's speed) train for equal time
under μP (the learning rate just chosen transfers to them), a constant learning rate after
warm-up, their training loss read at every tenth of the run; a scaling law L(N, D) fitted
to those points (`steplab.auto.scaling`) predicts the final loss
of every priced size at the tokens it would see in the final run, and the lowest wins.
At the chosen size, a shallower-and-wider and a deeper-and-narrower shape of about the
same parameters are priced too; one is taken only when it is clearly faster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from steplab.atomic import replacing
from steplab.auto.context import Context, Proxy
from steplab.auto.scaling import Candidate, Fit, Point, compute_optimal_size, fit_scaling_law
from steplab.auto.space import DEPTH, MIN_STEPS, WIDTHS, at_width, shape_name
from steplab.auto.state import Decision
from steplab.tools.throughput import Speed

MIN_FINAL_STEPS = 300
CURVE_FROM = 0.3  # fit points from 30% of each proxy's tokens on: before that, warm-up dominates
DEPTH_GAIN = 1.15  # another depth must be 15% faster per parameter to be taken


def price_ladder(ctx: Context, final: float, allowance: float) -> dict[int, Speed]:
    """Speeds of the ladder's widths, smallest first, up to the first too slow for the final run
    (or too slow to price within a tenth of the stage's allowance)."""
    out: dict[int, Speed] = {}
    start = ctx.clock.spent()
    for w in WIDTHS:
        c = at_width(ctx.cfg, w)
        if out and ctx.clock.spent() - start > 0.15 * allowance:
            break
        sp = ctx.speed(c)
        if out and final / ctx.step_cost(sp, c) < MIN_FINAL_STEPS:
            break
        out[w] = sp
    return out


def _rate(ctx: Context, sp: Speed) -> float:
    """Tokens per unit of budget: tokens/s for a time budget, tokens/FLOP for a FLOP budget."""
    return sp.tokens_per_second if ctx.budget.kind == "seconds" else 1.0 / sp.flops_per_token


# The prior: the `default` preset's own ratio, 600 steps x 4,096 tokens for 0.79M matmul
# parameters (about 3 tokens per parameter), tuned for this project's CPU budgets. Chinchilla's
# 20 is the compute-optimal ratio at large scale; a small model on a small corpus and budget
# does better with fewer tokens per parameter (the fit below decides when it can).
PRIOR_TOKENS_PER_PARAM = 3.1


def prior_index(cands: list[Candidate], final: float) -> int:
    """The candidate nearest the prior's tokens per parameter at this machine's speeds."""
    ratio = PRIOR_TOKENS_PER_PARAM
    return min(
        range(len(cands)),
        key=lambda i: abs(math.log(cands[i].tokens_per_second * final / (ratio * cands[i].params))),
    )


@dataclass
class Evidence:
    """What the size decision saw: priced candidates, proxies, the fit and its predictions."""

    cands: list[Candidate]
    speeds: dict[int, Speed]
    final: float  # the final run's budget
    proxies: dict[int, Proxy] = field(default_factory=dict)
    fit: Fit | None = None
    predicted: dict[str, float] = field(default_factory=dict)


def decide_size(ctx: Context, allowance: float, final: float) -> Decision:
    start = ctx.clock.spent()
    speeds = price_ladder(ctx, final, allowance)
    widths = list(speeds)
    ev = Evidence(
        [Candidate(shape_name(w), speeds[w].matmul_params, _rate(ctx, speeds[w])) for w in widths],
        speeds,
        final,
    )
    prior = prior_index(ev.cands, final)
    if len(widths) == 1:
        return _decision(ctx, widths[0], "the only width fast enough for the final run", "rule", ev)
    trial = affordable_trial(ctx, widths, prior, allowance - (ctx.clock.spent() - start))
    if len(trial) < 2:
        reason = (
            f"no budget for size proxies: the prior, {PRIOR_TOKENS_PER_PARAM:g} tokens per parameter (the "
            f"default preset's ratio) at this machine's speed ({ev.cands[prior].name})"
        )
        return _decision(ctx, widths[prior], reason, "fallback", ev)
    for i, w in enumerate(trial):
        c = at_width(ctx.cfg, w)
        c.schedule.decay_fraction = 0.0  # constant after warm-up: points along the run are comparable
        share = (allowance - (ctx.clock.spent() - start)) / (len(trial) - i)
        tokens = ctx.tokens_for(speeds[w], share)
        ev.proxies[w] = ctx.proxy(f"size-{shape_name(w)}", c, tokens=tokens, params=speeds[w].matmul_params)
    ok = {w: p for w, p in ev.proxies.items() if p.ok}
    if not ok:
        return _decision(ctx, trial[0], "every size proxy failed: the smallest", "fallback", ev)
    ev.fit = fit_scaling_law(
        [
            Point(p.matmul_params, tok, loss)
            for p in ok.values()
            for tok, loss in p.curve
            if tok >= CURVE_FROM * p.tokens
        ]
    )
    best = ok[min(ok, key=lambda w: ok[w].val_loss or math.inf)]
    spent = best.train_seconds if ctx.budget.kind == "seconds" else best.tokens * best.flops_per_token
    seen = [p.matmul_params for p in ok.values()]
    choice = compute_optimal_size(
        ev.fit, ev.cands, final, proxy_best=best.name[len("size-") :], proxy_seconds=spent, seen_params=seen
    )
    ev.predicted = choice.predicted if choice.rule == "fit" else {}
    width = next(w for w in widths if shape_name(w) == choice.name)
    return _decision(ctx, width, choice.reason, "measured" if choice.rule == "fit" else "fallback", ev)


def affordable_trial(ctx: Context, widths: list[int], prior: int, allowance: float) -> list[int]:
    """Up to three widths around the prior; the largest dropped while it cannot get MIN_STEPS
    steps at equal time (it gets the fewest)."""
    lo = min(max(prior - 1, 0), max(len(widths) - 3, 0))
    trial = widths[lo : lo + 3]
    while len(trial) > 1:
        c = at_width(ctx.cfg, trial[-1])
        if ctx.affordable(ctx.speed(c), c, allowance / len(trial), MIN_STEPS):
            break
        trial.pop()
    return trial


def _decision(ctx: Context, width: int, reason: str, rule: str, ev: Evidence) -> Decision:
    depth, width, depth_note = pick_depth(ctx, width, ev.speeds[width])
    rows = [["size", "params (matmul)", "tokens/s", "final tokens", "proxy val loss", "predicted final loss"]]
    for c, w in zip(ev.cands, ev.speeds, strict=True):
        p = ev.proxies.get(w)
        rows.append(
            [
                c.name,
                f"{c.params:,}",
                f"{ev.speeds[w].tokens_per_second:,.0f}",
                f"{c.tokens_per_second * ev.final:,.0f}",
                (f"{p.val_loss:.4f}" if p.ok else f"excluded ({p.verdict})") if p else "",
                f"{ev.predicted[c.name]:.4f}" if c.name in ev.predicted else "",
            ]
        )
    notes = []
    if ev.fit is not None:
        f = ev.fit
        trusted = (
            ""
            if f.trusted
            else " (not trusted: too few points or sizes, an exponent at its bound, or R² < 0.8)"
        )
        notes.append(
            f"Scaling-law fit on {f.points} points from {f.sizes} sizes: L = {f.e:.3f} + {f.a:.3g}/N^{f.alpha:.2f} "
            f"+ {f.b:.3g}/D^{f.beta:.2f}, R² {f.r2:.3f}{trusted}."
        )
    finals = {c.name: (c.params, c.tokens_per_second * ev.final) for c in ev.cands}
    plot = plot_fit(ctx.out / "auto_files" / "size.png", ev.proxies, ev.fit, finals)
    return Decision(
        "size",
        f"size: {shape_name(width, depth)}",
        {"model.n_embd": width, "model.n_layer": depth},
        reason + depth_note,
        rule=rule,
        table=rows,
        notes=notes,
        commands=["python benchmarks/scaling.py --axes width depth"],
        plot=str(plot.relative_to(ctx.out)) if plot else None,
    )


def pick_depth(ctx: Context, width: int, sp: Speed) -> tuple[int, int, str]:
    """(depth, width, note): the default depth unless a shape of similar size is clearly faster."""
    best = (DEPTH, width, sp.tokens_per_second * sp.matmul_params)
    for depth, scale in ((2, math.sqrt(2)), (8, 1 / math.sqrt(2))):
        w = max(8 * 4, int(round(width * scale / 8)) * 8)
        c = at_width(ctx.cfg, w, depth)
        s = ctx.speed(c)
        merit = s.tokens_per_second * s.matmul_params
        if merit > DEPTH_GAIN * best[2]:
            best = (depth, w, merit)
    if best[0] == DEPTH:
        return DEPTH, width, ""
    return (
        best[0],
        best[1],
        f"; depth {best[0]} at width {best[1]} is {best[2] / (sp.tokens_per_second * sp.matmul_params):.2f}x faster per parameter",
    )


def plot_fit(
    out: Path, proxies: dict[int, Proxy], fit, final_points: dict[str, tuple[float, float]]
) -> Path | None:  # noqa: ANN001
    """Measured validation loss against tokens per size, the fitted law, and its predictions."""
    if not any(p.curve for p in proxies.values()):
        return None
    from steplab.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (w, p) in enumerate(sorted(proxies.items())):
        if not p.curve:
            continue
        xs, ys = zip(*p.curve, strict=True)
        ax.plot(xs, ys, "o", color=f"C{i}", label=f"{shape_name(w)} ({p.matmul_params / 1e6:.2f}M) measured")
        if fit is not None:
            grid = [xs[0] * (max(xs) * 50 / xs[0]) ** (k / 60) for k in range(61)]
            ax.plot(grid, [fit.loss(p.matmul_params, d) for d in grid], "-", color=f"C{i}", alpha=0.6)
    if fit is not None:
        for name, (n, d) in final_points.items():
            ax.plot([d], [fit.loss(n, d)], "x", color="black", ms=6)
            ax.annotate(name, (d, fit.loss(n, d)), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title("size proxies and the fitted L(N, D); x: predicted final loss per size", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return out
