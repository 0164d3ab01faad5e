"""`steplab doctor RUN`: why is this run not converging?

Reads a run directory's metrics.jsonl, config.toml and summary.json (nothing else: no
model, no torch) and names what it sees, each finding with its evidence (steps, values)
and a concrete next step. Every check is a small function of the metric history, so each
can be tested on a synthetic history:

- ``diverged``       a non-finite loss, or the divergence guard gave up (where; the grad norm before it)
- ``spikes``         repeated loss spikes (the guard's events, or jumps in the logged losses)
- ``lr_too_high``    instability: steps that move the weights by > 5% of their norm, a loss
                     worse than a uniform guess, a loss that climbs back, spikes, divergence
- ``lr_too_low``     tiny update-to-weight ratios, a loss that barely moves or falls on a
                     nearly straight line without flattening
- ``plateau``        the loss fell, then stopped improving for the last third of the run
- ``overfitting``    validation loss rising while training loss falls
- ``clipping``       the gradient norm above --optim.grad-clip on most steps of the second half
- ``data_bound``     a large share of step time spent producing batches

Thresholds are module constants, named where they are used; they are rules of thumb for
AdamW-type optimizers, and the evidence is printed so a reader can disagree.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError
from steplab.figures import smooth
from steplab.rundir import is_run, read_number, read_run

SMOOTHING = 0.6  # EMA factor for the loss curves the rules read: light, so trends show early

BIG_UPDATE = 0.05  # one step moving the weights by 5% of their norm is shaking them
TINY_UPDATE = 1e-4  # ... by 0.01% barely moves them (healthy AdamW: about 1e-3)
CLIMB = 0.08  # the smoothed loss rising 8% above its best so far is instability
FLAT = 0.01  # less than 1% improvement over the last third is a plateau
BARELY = 0.03  # less than 3% total improvement: the loss barely moved
CLIP_SHARE = 0.5  # clipping on more than half of the logged steps is "most steps"
DATA_SHARE = 0.3  # more than 30% of step time producing batches is data-bound


@dataclass
class Finding:
    name: str
    title: str
    evidence: str
    next_step: str


@dataclass
class History:
    """A run's metrics, split by kind, plus the few config values the checks need."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    grad_norm: list[float | None] = field(default_factory=list)
    lr: list[float | None] = field(default_factory=list)
    update_ratio: list[float | None] = field(default_factory=list)
    data_fraction: list[float | None] = field(default_factory=list)
    evals: list[tuple[int, float]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    status: str | None = None

    def cfg(self, section: str, key: str, default: Any = None) -> Any:
        return self.config.get(section, {}).get(key, default)


def history(
    records: list[dict[str, Any]], config: dict[str, Any] | None = None, status: str | None = None
) -> History:
    h = History(config=config or {}, status=status)
    for r in records:
        if "event" in r:
            h.events.append(r)
        elif "loss" in r and read_number(r["loss"]) is not None:
            h.steps.append(int(r["step"]))
            h.loss.append(read_number(r["loss"]))  # type: ignore[arg-type]
            h.grad_norm.append(read_number(r.get("grad_norm")))
            h.lr.append(read_number(r.get("lr")))
            h.update_ratio.append(read_number(r.get("update_ratio")))
            h.data_fraction.append(read_number(r.get("data_fraction")))
        elif "val_loss" in r and read_number(r["val_loss"]) is not None:
            h.evals.append((int(r["step"]), read_number(r["val_loss"])))  # type: ignore[arg-type]
    return h


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4g}"


def _finite(h: History) -> tuple[list[int], list[float]]:
    pairs = [(s, v) for s, v in zip(h.steps, h.loss, strict=True) if math.isfinite(v)]
    return [s for s, _ in pairs], [v for _, v in pairs]


def uniform_loss(h: History) -> float | None:
    """The loss of a uniform guess, ln(vocab): a model above it has unlearned everything."""
    v = h.cfg("model", "vocab_size", 0)
    return math.log(v) if v and v > 1 else None


# --- the checks ---------------------------------------------------------------------------


def check_diverged(h: History) -> Finding | None:
    bad = next((i for i, v in enumerate(h.loss) if not math.isfinite(v)), None)
    gave_up = next((e for e in h.events if e.get("action") in ("give_up", "stop")), None)
    if bad is None and gave_up is None and h.status != "diverged":
        return None
    if bad is not None:
        step, where = h.steps[bad], f"loss became {h.loss[bad]} at step {h.steps[bad]}"
    elif gave_up is not None:
        step, where = (
            int(gave_up["step"]),
            (
                f"the divergence guard gave up at step {gave_up['step']} ({gave_up.get('reason')}, "
                f"loss {gave_up.get('flagged_loss')})"
            ),
        )
    else:
        step, where = h.steps[-1] if h.steps else 0, "the run ended with status diverged"
    before = [
        (s, g)
        for s, g in zip(h.steps, h.grad_norm, strict=True)
        if s < step and g is not None and math.isfinite(g)
    ]
    grad = ""
    if before:
        grad = f"; grad norm before it: {_g(before[-1][1])} at step {before[-1][0]}"
        if len(before) >= 3:
            low = min(g for _, g in before)
            grad += f" (lowest {_g(low)})"
    return Finding(
        "diverged",
        "the run diverged",
        where + grad,
        "restart from the last good checkpoint with a lower --optim.lr (divide by 3), keep --optim.grad-clip 1.0, "
        "and use --guard.policy rollback to undo the next one automatically",
    )


def loss_spikes(h: History) -> list[tuple[int, float, float]]:
    """(step, loss, running mean) of spikes: the guard's events plus jumps in the logged losses."""
    out = {
        int(e["step"]): (
            int(e["step"]),
            read_number(e.get("flagged_loss")) or math.nan,
            read_number(e.get("threshold")) or math.nan,
        )
        for e in h.events
        if e.get("reason") == "loss spike"
    }
    steps, losses = _finite(h)
    mean = var = 0.0
    for i, (s, v) in enumerate(zip(steps, losses, strict=True)):
        if i >= 5 and v > mean + 4 * math.sqrt(var) and v > 1.15 * mean:
            out.setdefault(s, (s, v, mean))
            continue  # a spike does not enter the statistics
        if i == 0:
            mean, var = v, 0.0
        else:
            d = v - mean
            mean += 0.3 * d
            var = 0.7 * (var + 0.3 * d * d)
    return sorted(out.values())


def check_spikes(h: History) -> Finding | None:
    spikes = loss_spikes(h)
    if len(spikes) < 2:
        return None
    shown = ", ".join(f"step {s} ({_g(v)})" for s, v, _ in spikes[:6])
    return Finding(
        "spikes",
        f"repeated loss spikes ({len(spikes)})",
        f"loss jumped well above its running mean at {shown}",
        "lower --optim.lr, lengthen --schedule.warmup-steps, try --optim.beta2 0.95, and keep "
        "--guard.policy rollback on to undo the worst",
    )


def check_lr_too_high(h: History) -> Finding | None:
    steps, losses = _finite(h)
    evidence = []
    ratios = [
        (s, r) for s, r in zip(h.steps, h.update_ratio, strict=True) if r is not None and math.isfinite(r)
    ]
    if ratios:
        s, r = max(ratios, key=lambda x: x[1])
        if r > BIG_UPDATE:
            evidence.append(
                f"one step moved the weights by {r:.1%} of their norm (step {s}; healthy is ~0.1%)"
            )
    uniform = uniform_loss(h)
    if uniform is not None:
        worse = [(s, v) for s, v in zip(steps, losses, strict=True) if v > uniform * 1.05]
        if worse:
            evidence.append(
                f"loss {_g(worse[0][1])} at step {worse[0][0]} is worse than a uniform guess (ln V = {uniform:.3g})"
            )
    sm = smooth(losses, SMOOTHING)
    best, best_at = math.inf, 0
    for s, v in zip(steps, sm, strict=True):
        if v < best:
            best, best_at = v, s
        elif best < math.inf and v > best * (1 + CLIMB):
            evidence.append(f"smoothed loss climbed from {best:.4g} (step {best_at}) to {v:.4g} (step {s})")
            break
    if len(loss_spikes(h)) >= 2:
        evidence.append(f"{len(loss_spikes(h))} loss spikes")
    if any(not math.isfinite(v) for v in h.loss) or h.status == "diverged":
        evidence.append("the run diverged")
    if not evidence:
        return None
    lr = h.cfg("optim", "lr")
    return Finding(
        "lr_too_high",
        "learning rate likely too high (instability)",
        "; ".join(evidence),
        f"divide --optim.lr by 3 to 10 (now {lr}), or run `steplab train --optim.lr auto` to pick one",
    )


def _line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Slope and R² of the least-squares line."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return 0.0, 0.0
    slope = sxy / sxx
    return slope, (sxy * sxy) / (sxx * syy)


def check_lr_too_low(h: History) -> Finding | None:
    steps, losses = _finite(h)
    if len(losses) < 5 or check_lr_too_high(h) is not None:
        return None
    evidence = []
    # update sizes while the schedule is near its peak (a decayed tail is small by design)
    peak = max((lr for lr in h.lr if lr is not None), default=None)
    ratios = [
        r
        for r, lr in zip(h.update_ratio, h.lr, strict=True)
        if r is not None and (peak is None or lr is None or lr >= 0.5 * peak)
    ]
    if ratios and statistics.median(ratios) < TINY_UPDATE:
        evidence.append(
            f"median update-to-weight ratio {statistics.median(ratios):.1e} per step (healthy is ~1e-3)"
        )
    first, last = statistics.fmean(losses[:3]), statistics.fmean(losses[-3:])
    drop = (first - last) / abs(first) if first else 0.0
    if drop < BARELY:
        evidence.append(
            f"loss barely moved: {first:.4g} -> {last:.4g} ({drop:.1%}) over {steps[-1] - steps[0]} steps"
        )
    else:
        slope, r2 = _line_fit([float(s) for s in steps], smooth(losses, SMOOTHING))
        half = len(losses) // 2
        s1, _ = _line_fit([float(s) for s in steps[:half]], losses[:half])
        s2, _ = _line_fit([float(s) for s in steps[half:]], losses[half:])
        if slope < 0 and r2 > 0.9 and s2 < 0 and s2 <= 0.6 * s1 and drop < 0.3:
            evidence.append(
                f"loss falls on a nearly straight line (R² {r2:.2f}) without flattening "
                f"({first:.4g} -> {last:.4g}, {slope * 100:.3g} per 100 steps)"
            )
    if not evidence:
        return None
    lr = h.cfg("optim", "lr")
    return Finding(
        "lr_too_low",
        "learning rate likely too low (slow progress)",
        "; ".join(evidence),
        f"multiply --optim.lr by 3 to 10 (now {lr}), or run `steplab train --optim.lr auto` to pick one",
    )


def check_plateau(h: History) -> Finding | None:
    steps, losses = _finite(h)
    if len(losses) < 9:
        return None
    sm = smooth(losses, SMOOTHING)
    cut = (2 * len(sm)) // 3
    before, tail = min(sm[:cut]), min(sm[cut:])
    start = sm[0]
    if (start - before) / abs(start) < 0.1:  # it never really fell: that is "slow", not a plateau
        return None
    gain = (before - tail) / abs(before)
    if gain >= FLAT:
        return None
    return Finding(
        "plateau",
        "plateau",
        f"smoothed loss {before:.4g} by step {steps[cut - 1]}, {tail:.4g} at best over steps "
        f"{steps[cut]}-{steps[-1]} ({gain:+.1%})",
        "if the learning rate is still at its peak, cool it down (--schedule wsd or cosine); otherwise the "
        "model is at its capacity for this data: widen or deepen it (--model.n-embd, --model.n-layer) or add data",
    )


def check_overfitting(h: History) -> Finding | None:
    if len(h.evals) < 3:
        return None
    best_step, best = min(h.evals, key=lambda e: e[1])
    last_step, last = h.evals[-1]
    if last_step == best_step or last - best < max(0.02, 0.02 * best):
        return None
    steps, losses = _finite(h)
    at_best = [v for s, v in zip(steps, smooth(losses, SMOOTHING), strict=True) if s <= best_step]
    later = [v for s, v in zip(steps, smooth(losses, SMOOTHING), strict=True) if s > best_step]
    if not at_best or not later or later[-1] >= at_best[-1]:
        return None  # training loss rose too: that is instability, not overfitting
    return Finding(
        "overfitting",
        "overfitting",
        f"validation loss rose from {best:.4g} (step {best_step}) to {last:.4g} (step {last_step}) while "
        f"training loss fell from {at_best[-1]:.4g} to {later[-1]:.4g}",
        f"use the best checkpoint (`--checkpoint best`, step {best_step}), stop earlier, add data, or raise "
        "--model.dropout / --optim.weight-decay",
    )


def check_clipping(h: History) -> Finding | None:
    clip = h.cfg("optim", "grad_clip", 1.0)
    # the second half: large gradients right after initialisation are normal
    norms = [g for g in h.grad_norm[len(h.grad_norm) // 2 :] if g is not None and math.isfinite(g)]
    if not clip or len(norms) < 4:
        return None
    clipped = sum(g > clip for g in norms)
    if clipped / len(norms) <= CLIP_SHARE:
        return None
    return Finding(
        "clipping",
        "gradient clipping active on most steps",
        f"grad norm above --optim.grad-clip {clip:g} on {clipped} of {len(norms)} logged steps in the second "
        f"half of the run (median {statistics.median(norms):.3g})",
        "the clip, not the learning rate, sets the step size: if the loss is unstable lower --optim.lr; "
        "if it is slow raise --optim.grad-clip (or set it to 0)",
    )


def check_data_bound(h: History) -> Finding | None:
    shares = [d for d in h.data_fraction if d is not None]
    if len(shares) < 3 or statistics.median(shares) <= DATA_SHARE:
        return None
    return Finding(
        "data_bound",
        "throughput bound by data loading",
        f"median {statistics.median(shares):.0%} of each step's time spent producing batches",
        "keep the token cache on a local disk, raise --train.batch-size (fewer, larger batches), "
        "and check that nothing else competes for the CPU",
    )


CHECKS = [
    check_diverged,
    check_spikes,
    check_lr_too_high,
    check_lr_too_low,
    check_plateau,
    check_overfitting,
    check_clipping,
    check_data_bound,
]


def diagnose(h: History) -> list[Finding]:
    """Every finding, most serious first."""
    return [f for check in CHECKS if (f := check(h)) is not None]


def load_history(run_dir: Path) -> History:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SteplabError(f"doctor: {run_dir} is not a run directory")
    files = read_run(run_dir) if is_run(run_dir) else None
    if files is None or not files.records:
        raise SteplabError(f"doctor: {run_dir} has no metrics.jsonl records (train first, or check the path)")
    return history(files.records, files.config, files.summary.get("status"))


def report(h: History, findings: list[Finding], run: str) -> str:
    steps, losses = _finite(h)
    head = f"{run}: {len(h.steps)} logged steps"
    if losses:
        head += f", loss {losses[0]:.4g} (step {steps[0]}) -> {losses[-1]:.4g} (step {steps[-1]})"
    if h.evals:
        best = min(h.evals, key=lambda e: e[1])
        head += f", val {h.evals[-1][1]:.4g} (best {best[1]:.4g} at step {best[0]})"
    if h.status:
        head += f", status {h.status}"
    lines = [head]
    if not findings:
        lines.append("no problem found")
    for f in findings:
        lines += [f"- {f.title}: {f.evidence}", f"  next: {f.next_step}"]
    return "\n".join(lines)
