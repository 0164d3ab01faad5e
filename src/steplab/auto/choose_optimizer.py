"""Decision 2: the optimizer and its learning rate, at a small proxy width under μP.

For each optimizer the LR range test (`steplab lr-find`) gives a cheap first guess when the
budget affords it (else the optimizer's registered default); proxy runs at the guess and a
factor of two either side measure the real answer, and a parabola through the three
losses in log learning rate places the minimum between them. The proxy model is at the
μP base width, so the learning rate transfers to every wider model (`steplab transfer`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

from steplab.auto.context import Context, Proxy, quiet_copy
from steplab.auto.space import EXTRA_OPTIMIZERS, MIN_STEPS, OPTIMIZERS
from steplab.auto.state import Decision
from steplab.config import RunConfig
from steplab.optim import DEFAULT_LR
from steplab.tools.throughput import Speed

LR_FACTOR = 2.0
LR_FIND_STEPS = 60


def parabola_min(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """The x of the vertex of the parabola through three points (None if it opens downward)."""
    (x0, x1, x2), (y0, y1, y2) = xs, ys
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if a <= 0:
        return None
    return -b / (2 * a)


def refine_lr(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, str]:
    """The best learning rate from a log-spaced bracket: the parabola's vertex when the best
    point is the middle one (clamped inside the bracket), else the best point itself."""
    best = min(range(len(lrs)), key=lambda i: losses[i])
    if len(lrs) == 3 and best == 1:
        v = parabola_min([math.log(x) for x in lrs], losses)
        if v is not None:
            lo, hi = math.log(lrs[0]), math.log(lrs[2])
            return math.exp(min(max(v, lo), hi)), "parabola vertex between the measured points"
    edge = " (the best point is at the edge of the bracket)" if len(lrs) == 3 and best != 1 else ""
    return lrs[best], "best measured point" + edge


def lr_guess(ctx: Context, cfg, optimizer: str, *, use_lr_find: bool) -> tuple[float, str]:  # noqa: ANN001
    default = DEFAULT_LR.get(optimizer, 1e-3)
    if not use_lr_find:
        return default, f"registered default {default:g} (no budget for a range test)"
    key = f"lr-find-{optimizer}"
    cached = ctx.state.measurements.get(key)
    if cached is None:
        from steplab.tools.lr_find import lr_find

        c = quiet_copy(cfg)
        c.optim.name = optimizer
        res = lr_find(c, steps=LR_FIND_STEPS, lr_min=default / 300, lr_max=default * 100)
        cached = {"lr": res.suggestion.lr, "stopped": res.stopped}
        ctx.state.measurements[key] = cached
        ctx.save()
    lr = float(cached["lr"])
    if math.isfinite(lr) and default / 10 <= lr <= default * 10:
        return lr, f"lr-find suggested {lr:.3g}"
    return default, f"lr-find suggested {lr:.3g}, too far from the default: default {default:g}"


def plan_points(runs: float, optimizers: int) -> tuple[int, bool]:
    """(learning rates per optimizer, whether to run lr-find first) for `runs` affordable proxies."""
    if runs >= 4 * optimizers:
        return 3, True
    if runs >= 3 * optimizers:
        return 3, False
    return 1, False


# The registered defaults were tuned at the default preset's width: that is their muP base.
FALLBACK = {
    "optim.name": "muon",
    "optim.lr": DEFAULT_LR["muon"],
    "model.parametrization": "mup",
    "model.mup_base_width": 128,
}


@dataclass
class LrSearch:
    """The proxies of this stage, every one trained on the same number of tokens: an equal
    share of what the stage has left when the first proxy starts (after every range test),
    and never fewer than MIN_STEPS steps, so no optimizer is judged on a starved proxy."""

    ctx: Context
    cfg: RunConfig
    speed: Speed
    allowance: float
    planned: int  # proxies this stage plans to run
    rows: list[list[str]]
    start: float = 0.0
    done: int = 0
    tokens: int = 0  # per proxy, fixed by the first one

    def measure(self, name: str, lr: float, note: str) -> Proxy:
        ctx, c = self.ctx, copy.deepcopy(self.cfg)
        if not self.tokens:
            share = (self.allowance - (ctx.clock.spent() - self.start)) / max(1, self.planned - self.done)
            per_step = c.train.batch_size * c.train.grad_accum * c.model.block_size
            self.tokens = max(ctx.tokens_for(self.speed, share), MIN_STEPS * per_step)
        c.optim.name, c.optim.lr = name, lr
        p = ctx.proxy(f"optimizer-{name}-lr{lr:.3g}", c, tokens=self.tokens, params=self.speed.matmul_params)
        self.done += 1
        self.rows.append([name, f"{lr:.3g}", f"{p.val_bpb:.4f}" if p.ok else f"excluded ({p.verdict})", note])
        return p

    def best_lr(
        self, name: str, lrs: list[float], note: str, *, extend: bool
    ) -> tuple[float, float, str] | None:
        """(lr, bits/byte, how) of `name`'s best learning rate, or None when every proxy failed."""
        ok = {
            lr: p.val_bpb or 0.0
            for i, lr in enumerate(lrs)
            if (p := self.measure(name, lr, note if i == 0 else "")).ok
        }
        if extend and len(ok) == 3 and min(ok, key=ok.__getitem__) != lrs[1]:
            edge = min(ok, key=ok.__getitem__)
            further = edge * LR_FACTOR if edge == lrs[2] else edge / LR_FACTOR
            p = self.measure(name, further, "the minimum was at the edge: one step further")
            if p.ok:
                ok[further] = p.val_bpb or 0.0
        if not ok:
            return None
        if len(ok) < 3:
            lr = min(ok, key=ok.__getitem__)
            return lr, ok[lr], "best measured point"
        xs = sorted(ok)
        i = min(max(xs.index(min(ok, key=ok.__getitem__)), 1), len(xs) - 2)
        lr, how = refine_lr(xs[i - 1 : i + 2], [ok[x] for x in xs[i - 1 : i + 2]])
        return lr, min(ok.values()), how


def decide_optimizer(ctx: Context, allowance: float) -> Decision:
    cfg = copy.deepcopy(ctx.cfg)
    sp = ctx.speed(cfg)
    one = ctx.step_cost(sp, cfg) * MIN_STEPS + (ctx.proxy_overhead() if ctx.budget.kind == "seconds" else 0.0)
    runs = allowance / one
    if runs < len(OPTIMIZERS):
        return Decision(
            "optimizer",
            f"optimizer: muon, lr {DEFAULT_LR['muon']:g}",
            dict(FALLBACK),
            f"no budget to compare optimizers ({MIN_STEPS}-step proxies cost {one:.3g} each, the stage had "
            f"{allowance:.3g}): Muon at its registered default, the best optimizer of docs/optimizers.md",
            rule="fallback",
        )
    optimizers = list(OPTIMIZERS) + (list(EXTRA_OPTIMIZERS) if runs >= 16 else [])
    points, use_lr_find = plan_points(runs, len(optimizers))
    extend = points == 3 and runs >= 5 * len(optimizers)  # budget to follow a minimum past the bracket
    rows = [["optimizer", "learning rate", "val bits/byte", "first guess"]]
    search = LrSearch(ctx, cfg, sp, allowance, len(optimizers) * (points + extend), rows, ctx.clock.spent())
    best: dict[str, tuple[float, float, str]] = {}  # optimizer -> (lr, bpb, how)
    guesses = {name: lr_guess(ctx, cfg, name, use_lr_find=use_lr_find) for name in optimizers}
    for name, (center, how) in guesses.items():
        lrs = [center / LR_FACTOR, center, center * LR_FACTOR] if points == 3 else [center]
        if (found := search.best_lr(name, lrs, how, extend=extend)) is not None:
            best[name] = found
    if not best:
        reason = "every proxy diverged or failed: Muon at its registered default"
        return Decision("optimizer", "optimizer: muon", dict(FALLBACK), reason, rule="fallback", table=rows)
    winner = min(best, key=lambda k: best[k][1])
    lr, best_bpb, how = best[winner]
    proxy_toml = ctx.out / "proxies" / f"optimizer-{winner}-lr{lr:.3g}" / "config.toml"
    mup = {"model.parametrization": "mup", "model.mup_base_width": cfg.model.n_embd}
    return Decision(
        "optimizer",
        f"optimizer: {winner}, lr {lr:.3g}",
        {"optim.name": winner, "optim.lr": lr, **mup},
        f"lowest validation bits per byte ({best_bpb:.4f}) at width {cfg.model.n_embd}; lr: {how}",
        table=rows,
        notes=[
            f"The proxies ran at width {cfg.model.n_embd}, the μP base width: wider models use the "
            "same learning rate with μP's per-layer scaling (`steplab transfer`).",
            f"{points} learning rate(s) per optimizer, a factor {LR_FACTOR:g} apart, centred on "
            + ("the LR range test's suggestion." if use_lr_find else "the registered default."),
        ],
        commands=[
            f"steplab lr-find --config {proxy_toml} --optim {winner}",
            f"steplab compare --config {proxy_toml} --vary optim.name=" + ",".join(optimizers),
        ],
    )
