"""Decision 3: the model's size and shape for the final run's budget.

Each width of the ladder is priced on this device (tokens per second of the real step);
widths too slow for a few hundred final steps are left out. Three sizes around the
Chinchilla prior (20 tokens per parameter at this machine's speed) train for equal time
under μP (the learning rate just chosen transfers to them), a constant learning rate after
warm-up, their training loss read at every tenth of the run; a scaling law L(N, D) fitted
to those points (`steplab.auto.scaling`) predicts the final loss
of every priced size at the tokens it would see in the final run, and the lowest wins.
At the chosen size, a shallower-and-wider and a deeper-and-narrower shape of about the
same parameters are priced too; one is taken only when it is clearly faster.
"""

from __future__ import annotations

import math
from pathlib import Path

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
        if w < ctx.cfg.model.mup_base_width:
            continue
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


def prior_index(cands: list[Candidate], final: float) -> int:
    """The candidate nearest Chinchilla's 20 tokens per parameter at this machine's speeds."""
    return min(
        range(len(cands)),
        key=lambda i: abs(math.log(cands[i].tokens_per_second * final / (20 * cands[i].params))),
    )


def decide_size(ctx: Context, allowance: float, final: float) -> Decision:
    start = ctx.clock.spent()
    speeds = price_ladder(ctx, final, allowance)
    widths = list(speeds)
    cands = [Candidate(shape_name(w), speeds[w].matmul_params, _rate(ctx, speeds[w])) for w in widths]
    prior = prior_index(cands, final)
    if len(cands) == 1:
        return _decision(
            ctx,
            widths[0],
            "the only width fast enough for the final run",
            "rule",
            cands,
            speeds,
            {},
            None,
            final,
        )
    lo = min(max(prior - 1, 0), max(len(cands) - 3, 0))
    trial = widths[lo : lo + 3]
    while len(trial) > 1:  # the largest gets the fewest steps at equal time: it must still learn
        c = at_width(ctx.cfg, trial[-1])
        if ctx.affordable(
            speeds[trial[-1]], c, (allowance - (ctx.clock.spent() - start)) / len(trial), MIN_STEPS
        ):
            break
        trial.pop()
    if len(trial) < 2:
        reason = f"no budget for size proxies: Chinchilla's prior, 20 tokens per parameter at this machine's speed ({cands[prior].name})"
        return _decision(ctx, widths[prior], reason, "fallback", cands, speeds, {}, None, final)
    proxies: dict[int, Proxy] = {}
    for i, w in enumerate(trial):
        c = at_width(ctx.cfg, w)
        c.schedule.decay_fraction = 0.0  # constant after warm-up: points along the run are comparable
        share = (allowance - (ctx.clock.spent() - start)) / (len(trial) - i)
        proxies[w] = ctx.proxy(
            f"size-{shape_name(w)}",
            c,
            tokens=ctx.tokens_for(speeds[w], share),
            params=speeds[w].matmul_params,
        )
    ok = {w: p for w, p in proxies.items() if p.ok}
    if not ok:
        return _decision(
            ctx,
            trial[0],
            "every size proxy failed: the smallest",
            "fallback",
            cands,
            speeds,
            proxies,
            None,
            final,
        )
    points = [
        Point(p.matmul_params, tok, loss)
        for p in ok.values()
        for tok, loss in p.curve
        if tok >= CURVE_FROM * p.tokens
    ]
    fit = fit_scaling_law(points)
    best_w = min(ok, key=lambda w: ok[w].val_loss or math.inf)
    share = (
        ok[best_w].train_seconds
        if ctx.budget.kind == "seconds"
        else ok[best_w].tokens * ok[best_w].flops_per_token
    )
    choice = compute_optimal_size(
        fit,
        cands,
        final,
        proxy_best=shape_name(best_w),
        proxy_seconds=share,
        seen_params=[p.matmul_params for p in ok.values()],
    )
    width = next(w for w in widths if shape_name(w) == choice.name)
    rule = "measured" if choice.rule == "fit" else "fallback"
    return _decision(
        ctx,
        width,
        choice.reason,
        rule,
        cands,
        speeds,
        proxies,
        fit,
        final,
        predicted=choice.predicted if choice.rule == "fit" else {},
    )


def _decision(
    ctx: Context,
    width: int,
    reason: str,
    rule: str,
    cands: list[Candidate],
    speeds: dict[int, Speed],
    proxies: dict[int, Proxy],
    fit: Fit | None,
    final: float,
    predicted: dict[str, float] | None = None,
) -> Decision:
    depth, width, depth_note = pick_depth(ctx, width, speeds[width])
    rows = [["size", "params (matmul)", "tokens/s", "final tokens", "proxy val loss", "predicted final loss"]]
    for c, w in zip(cands, speeds, strict=True):
        p = proxies.get(w)
        rows.append(
            [
                c.name,
                f"{c.params:,}",
                f"{speeds[w].tokens_per_second:,.0f}",
                f"{c.tokens_per_second * final:,.0f}",
                (f"{p.val_loss:.4f}" if p.ok else f"excluded ({p.verdict})") if p else "",
                f"{predicted[c.name]:.4f}" if predicted and c.name in predicted else "",
            ]
        )
    notes = []
    if fit is not None:
        trusted = (
            ""
            if fit.trusted
            else " (not trusted: too few points or sizes, an exponent at its bound, or R² < 0.8)"
        )
        notes.append(
            f"Scaling-law fit on {fit.points} points from {fit.sizes} sizes: L = {fit.e:.3f} + {fit.a:.3g}/N^{fit.alpha:.2f} "
            f"+ {fit.b:.3g}/D^{fit.beta:.2f}, R² {fit.r2:.3f}{trusted}."
        )
    plot = plot_fit(
        ctx.out / "auto_files" / "size.png",
        proxies,
        fit,
        {c.name: (c.params, c.tokens_per_second * final) for c in cands},
    )
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
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
