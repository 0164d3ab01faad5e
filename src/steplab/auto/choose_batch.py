"""Decisions 4-6: the batch size, a learning-rate check at the final size, the schedule.

Batch: McCandlish et al. (2018) model the steps and examples to reach a loss as
S = S_min (1 + B_noise / B) and E = E_min (1 + B / B_noise). The time of a run is then
S x (seconds per step at B) = S_min x T x (B + B_noise) / (tokens per second at B), with T
the context length, so the batch that reaches a loss soonest on this device minimises
(B + B_noise) / tokens_per_second(B): large enough to use the device, not much larger than
the noise scale. B_noise (B_simple) is measured on the size proxy closest to the final
model, at its final weights: where the final run will spend its steps, as closely as the
search can afford. The learning rate follows the batch by the square-root rule.

Learning-rate check: the μP transfer is checked once at the final size and batch when the
budget affords two short runs there; the better of the transferred value and half or
twice it is kept.
"""

from __future__ import annotations

import copy
import math

from steplab.auto.context import Context, quiet_copy
from steplab.auto.state import Decision

BATCHES = (8, 16, 32, 64, 128)
MIN_CHECK_STEPS = 100
NOISE_PASSES = 24  # rounds x micro-batches of the noise-scale measurement, in forward-backward passes


def best_batch(noise: float, speeds: dict[int, float]) -> int:
    """argmin over B of (B + noise) / tokens_per_second(B) (module docstring)."""
    return min(speeds, key=lambda b: (b + max(noise, 0.0)) / speeds[b])


def measure_noise(ctx: Context) -> float | None:
    """B_simple (sequences) at the final weights of the size proxy closest to the chosen width."""
    if "noise_scale" in ctx.state.measurements:
        return ctx.state.measurements["noise_scale"]
    from steplab import checkpoint as ckpt
    from steplab.loop.noise_scale import measure_noise_scale
    from steplab.loop.session import build

    done = [
        (name, p)
        for name, p in ctx.state.proxies.items()
        if name.startswith("size-") and p["status"] == "finished"
    ]
    if not done:
        return None
    target = ctx.cfg.model.n_embd
    name, _ = min(done, key=lambda kv: abs(math.log(int(kv[0].split("-w")[1].split("-")[0]) / target)))
    run_dir = ctx.out / "proxies" / name
    loaded = ckpt.load(ckpt.latest(run_dir), with_optimizer=False)
    cfg = quiet_copy(loaded.cfg)
    s = build(cfg, data=ctx.data(cfg))
    ckpt.load_weights(s.model, loaded.weights, run_dir)
    value = float(measure_noise_scale(s, rounds=6, micro_batches=4).b_simple)
    ctx.state.measurements["noise_run"] = str(run_dir)
    ctx.state.measurements["noise_scale"] = value if math.isfinite(value) else None
    ctx.save()
    return ctx.state.measurements["noise_scale"]


def decide_batch(ctx: Context, allowance: float) -> Decision:
    start = ctx.clock.spent()
    base = ctx.speed(ctx.cfg)
    noise_cost = NOISE_PASSES * ctx.step_cost(base, ctx.cfg)
    if allowance < 2 * noise_cost:
        reason = (
            f"no budget to measure the noise scale ({noise_cost:.3g} needed, the stage had {allowance:.3g})"
        )
        return Decision(
            "batch",
            f"batch: {ctx.cfg.train.batch_size}",
            {},
            reason + ": the proxies' batch",
            rule="fallback",
        )
    noise = measure_noise(ctx)
    speeds: dict[int, float] = {}
    for b in BATCHES:
        c = copy.deepcopy(ctx.cfg)
        c.train.batch_size = b
        speeds[b] = ctx.speed(c).tokens_per_second
        if ctx.clock.spent() - start > allowance:
            break
    if noise is None:
        reason = "the noise scale could not be measured (no finished size proxy): the proxies' batch"
        return Decision("batch", f"batch: {ctx.cfg.train.batch_size}", {}, reason, rule="fallback")
    b = best_batch(noise, speeds)
    lr = float(ctx.cfg.optim.lr)
    scale = min(2.0, max(0.5, math.sqrt(b / ctx.cfg.train.batch_size)))
    rows = [["batch (sequences)", "tokens/s", "relative time to a loss: (B + B_noise) / tokens/s"]]
    best = (b + noise) / speeds[b]
    rows += [[str(k), f"{v:,.0f}", f"{(k + noise) / v / best:.2f}"] for k, v in speeds.items()]
    return Decision(
        "batch",
        f"batch: {b} sequences",
        {"train.batch_size": b, "optim.lr": lr * scale},
        f"gradient noise scale B_simple = {noise:.1f} sequences; {b} sequences reach a loss soonest on this "
        f"device; lr x{scale:.2f} (square-root rule) -> {lr * scale:.3g}",
        table=rows,
        commands=[f"steplab batch-find --run {ctx.state.measurements.get('noise_run', 'PROXY')}"],
    )


def decide_lr_check(ctx: Context, allowance: float) -> Decision:
    cfg = copy.deepcopy(ctx.cfg)
    sp = ctx.speed(cfg)
    lr = float(cfg.optim.lr)
    step_cost = (
        sp.step_seconds
        if ctx.budget.kind == "seconds"
        else sp.flops_per_token * cfg.train.batch_size * cfg.model.block_size
    )
    per_run = allowance / 2
    if per_run < MIN_CHECK_STEPS * step_cost:
        return Decision(
            "lr_check",
            f"learning rate: {lr:.3g} (transferred)",
            {},
            f"no budget for a check at the final size ({MIN_CHECK_STEPS} steps there cost "
            f"{MIN_CHECK_STEPS * step_cost:.3g}, the check has {per_run:.3g} per run): the μP transfer stands",
            rule="fallback",
        )
    factors = (1.0, 0.5, 2.0) if allowance >= 3 * MIN_CHECK_STEPS * step_cost else (1.0, 0.5)
    results = {}
    start = ctx.clock.spent()
    for i, f in enumerate(factors):
        c = copy.deepcopy(cfg)
        c.optim.lr = lr * f
        share = (allowance - (ctx.clock.spent() - start)) / (len(factors) - i)
        results[f] = ctx.proxy(
            f"lrcheck-x{f:g}", c, tokens=ctx.tokens_for(sp, share), params=sp.matmul_params
        )
    ok = {f: p for f, p in results.items() if p.ok}
    rows = [["lr factor", "learning rate", "val bits/byte"]]
    rows += [
        [f"x{f:g}", f"{lr * f:.3g}", f"{p.val_bpb:.4f}" if p.ok else f"excluded ({p.verdict})"]
        for f, p in results.items()
    ]
    if not ok:
        return Decision(
            "lr_check",
            f"learning rate: {lr * 0.5:.3g}",
            {"optim.lr": lr * 0.5},
            "every check diverged: halved",
            rule="fallback",
            table=rows,
        )
    f = min(ok, key=lambda k: ok[k].val_bpb or math.inf)
    return Decision(
        "lr_check",
        f"learning rate: {lr * f:.3g}",
        {"optim.lr": lr * f},
        "the transferred learning rate holds at the final size"
        if f == 1.0
        else f"x{f:g} did better at the final size",
        table=rows,
    )


def decide_schedule(ctx: Context, final: float) -> Decision:
    """Warm-up, a flat plateau and a linear cool-down to zero over the last 30% of the final
    run's budget (time or tokens): the run cools down exactly when its budget ends."""
    cfg = ctx.cfg
    sp = ctx.speed(cfg)
    steps = (
        final / sp.step_seconds
        if ctx.budget.kind == "seconds"
        else final / (sp.flops_per_token * cfg.train.batch_size * cfg.model.block_size)
    )
    warmup = int(min(50, max(5, 0.05 * steps)))
    return Decision(
        "schedule",
        f"schedule: WSD, warm-up {warmup} steps, cool-down over the last 30%",
        {
            "schedule.name": "wsd",
            "schedule.warmup_steps": warmup,
            "schedule.decay_fraction": 0.3,
            "schedule.min_lr_ratio": 0.0,
        },
        f"about {steps:,.0f} steps fit the final budget; the cool-down is placed by budget spent, so the run ends cooled",
        rule="rule",
    )
