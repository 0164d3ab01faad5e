"""The learning-rate range test (Smith 2017; the fastai "LR finder").

The run's own model, optimizer and data are trained for `steps` steps while the learning rate
grows exponentially from `lr_min` to `lr_max`; the loss of every step is recorded and the test
stops early once the smoothed loss has blown up. The model is a throw-away copy built from
the config: the real run starts from its own fresh initialisation.

It is `steplab.loop.fit.fit` with two changes, not a copy of the loop: the session's schedule
is replaced by the exponential ramp (peak lr 1.0, so the multiplier *is* the learning rate)
and a callback records the losses and raises `StopTraining` on divergence.

Two suggestions are read off the curve (see `suggest`):
- ``steepest`` (the default): where the smoothed loss falls fastest per decade of learning
  rate, within the main descent;
- ``min10``: a tenth of the learning rate at the minimum of the smoothed loss.
On a language model the curve falls fast (the unigram statistics are learned), then lies on
a long, noisy plateau before it blows up, so its minimum can be any point of that plateau and
``min10`` inherits the noise: measured on the default model it was 5x too high and trained
19 % worse than the best grid point, while ``steepest`` came within 2 % (docs/tuning.md).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steplab.atomic import replacing, write_file
from steplab.config import RunConfig
from steplab.errors import SteplabError
from steplab.figures import smooth
from steplab.loop.fit import fit
from steplab.loop.hooks import Callback, StopTraining
from steplab.loop.session import Session, build

RULES = ("steepest", "min10")
DEFAULT_RULE = "steepest"
MIN_DROP = 0.02  # the smallest relative fall of the loss that counts as learning


# --- the numerics: pure functions ----------------------------------------------------------


def exp_lr(step: int, steps: int, lr_min: float, lr_max: float) -> float:
    """The range test's learning rate at `step`: lr_min at step 0, lr_max at step `steps - 1`."""
    if steps <= 1:
        return lr_min
    return lr_min * (lr_max / lr_min) ** (min(step, steps - 1) / (steps - 1))


def centered_smooth(values: Sequence[float] | np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing over the step index, normalised at the ends.

    Centred, unlike the running average the stop rule uses, so the curve the suggestions are
    read from is not shifted towards larger learning rates by the average's lag.
    """
    y = np.asarray(values, dtype=np.float64)
    if sigma <= 0 or len(y) < 3:
        return y.copy()
    radius = int(math.ceil(3 * sigma))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    num = np.convolve(y, k, mode="same")
    den = np.convolve(np.ones_like(y), k, mode="same")
    return num / den


@dataclass
class Suggestion:
    lr: float  # the recommended learning rate
    rule: str  # the rule that chose it
    min10: float  # the learning rate at the smoothed minimum, divided by 10
    steepest: float  # the learning rate of the steepest descent
    minimum: float  # the learning rate at the smoothed minimum
    note: str = ""  # a caveat about the curve, if any


def suggest(
    lrs: Sequence[float], losses: Sequence[float], *, rule: str = DEFAULT_RULE, sigma: float | None = None
) -> Suggestion:
    """Read both suggestions off a range-test curve and return the one `rule` names.

    The steepest point is searched in the main descent: after the first 5 % of the points
    (their slope is noise: the learning rate is too small to move the loss) and before the
    curve first comes within 10 % of its total fall from the minimum (so a dip on the
    plateau cannot win). A curve whose smoothed loss never falls by `MIN_DROP` of its start
    is an error, not a suggestion.
    """
    if rule not in RULES:
        raise SteplabError(f"--rule: unknown rule {rule!r} (valid: {', '.join(RULES)})")
    lr = np.asarray(lrs, dtype=np.float64)
    loss = np.asarray(losses, dtype=np.float64)
    finite = np.isfinite(loss)
    lr, loss = lr[finite], loss[finite]
    if len(lr) < 5:
        raise SteplabError(
            f"the range test recorded only {len(lr)} finite losses; use more --steps or a lower --lr-min"
        )
    sm = centered_smooth(loss, sigma if sigma is not None else max(1.0, len(lr) / 50))
    i_min = int(np.argmin(sm))
    start = max(1, len(lr) // 20)
    first = float(sm[:start].mean())
    if i_min <= start or first - sm[i_min] < MIN_DROP * abs(first):  # noise, not learning
        raise SteplabError(
            "the loss did not fall during the range test; raise --lr-max, use more --steps, "
            "or check the data and the optimizer"
        )
    knee = int(np.argmax(sm <= sm[i_min] + 0.1 * (first - sm[i_min])))  # the end of the main descent
    slope = np.gradient(sm, np.log10(lr))  # loss change per decade of learning rate
    i_steep = start + int(np.argmin(slope[start : max(knee, start) + 1]))
    note = ""
    if i_min >= len(lr) - 2:
        note = "the loss was still falling at --lr-max; the minimum may lie beyond the range tested"
    minimum = float(lr[i_min])
    out = Suggestion(
        lr=0.0,
        rule=rule,
        min10=minimum / 10,
        steepest=float(lr[i_steep]),
        minimum=minimum,
        note=note,
    )
    out.lr = out.min10 if rule == "min10" else out.steepest
    return out


# --- the test: fit with an exponential schedule and a recording callback ---------------------


class RangeRecorder(Callback):
    """Records (lr, loss) every step; stops once the running-average loss exceeds
    `diverge_factor` × its best, and at the last step (so `fit` skips its final evaluation)."""

    def __init__(self, steps: int, *, beta: float = 0.9, diverge_factor: float = 4.0, min_steps: int = 10):
        self.steps, self.beta, self.diverge_factor, self.min_steps = steps, beta, diverge_factor, min_steps
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.diverged_at: float | None = None

    def on_log(self, s: Session, state: Any, record: dict[str, Any]) -> None:
        self.lrs.append(float(record["lr"]))
        self.losses.append(float(record["loss"]))
        avg = smooth(self.losses, self.beta)
        if len(avg) > self.min_steps and avg[-1] > self.diverge_factor * min(avg):
            self.diverged_at = self.lrs[-1]
            raise StopTraining
        if state.step >= self.steps:
            raise StopTraining


@dataclass
class LRFindResult:
    optimizer: str
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: Suggestion
    lr_min: float
    lr_max: float
    steps: int
    stopped: str  # "diverged" (at diverged_at), "nan" or "finished"
    diverged_at: float | None = None
    alternatives: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def range_config(cfg: RunConfig, steps: int) -> RunConfig:
    """A copy of `cfg` for the range test: `steps` steps, every one logged, no evaluation."""
    c = copy.deepcopy(cfg)
    c.optim.lr = 1.0  # the schedule returns the learning rate itself
    c.train.max_steps, c.train.max_tokens, c.train.max_seconds = steps, None, None
    c.train.target_loss, c.train.log_every = None, 1
    c.eval.every = 0
    c.guard.policy = "off"  # the range test drives the loss up on purpose: the callback ends it
    c.train.noise_scale_every = 0
    return c


def lr_find(
    cfg: RunConfig,
    *,
    steps: int = 100,
    lr_min: float = 1e-7,
    lr_max: float = 10.0,
    rule: str = DEFAULT_RULE,
    diverge_factor: float = 4.0,
    progress: bool = False,
) -> LRFindResult:
    """Run the range test with `cfg`'s model, optimizer and data; `cfg` itself is not changed."""
    if not 0 < lr_min < lr_max:
        raise SteplabError(f"--lr-min must be > 0 and below --lr-max (got {lr_min:g}, {lr_max:g})")
    if steps < 10:
        raise SteplabError(f"--steps must be >= 10 (got {steps})")
    s = build(range_config(cfg, steps))
    s.schedule = lambda step, progress: exp_lr(step, steps, lr_min, lr_max)
    rec = RangeRecorder(steps, diverge_factor=diverge_factor)
    result = fit(s, callbacks=[rec], progress=progress)
    stopped = (
        "diverged" if rec.diverged_at is not None else ("nan" if result.status == "diverged" else "finished")
    )
    sug = suggest(rec.lrs, rec.losses, rule=rule)
    sm = centered_smooth(rec.losses, max(1.0, len(rec.losses) / 50))
    return LRFindResult(
        optimizer=cfg.optim.name,
        lrs=rec.lrs,
        losses=rec.losses,
        smoothed=[float(v) for v in sm],
        suggestion=sug,
        lr_min=lr_min,
        lr_max=lr_max,
        steps=steps,
        stopped=stopped,
        diverged_at=rec.diverged_at,
        alternatives={"min10": sug.min10, "steepest": sug.steepest},
    )


def resolve_auto_lr(cfg: RunConfig, *, quiet: bool = False, steps: int = 100) -> float:
    """`--optim.lr auto`: run the range test and set `cfg.optim.lr` to its suggestion."""
    res = lr_find(cfg, steps=steps)
    cfg.optim.lr = res.suggestion.lr
    if not quiet:
        print(
            f"lr-find: --optim.lr auto -> {res.suggestion.lr:.3g} ({res.suggestion.rule} rule; "
            f"steepest descent at {res.suggestion.steepest:.3g}, minimum at {res.suggestion.minimum:.3g})"
        )
        if res.suggestion.note:
            print(f"lr-find: note: {res.suggestion.note}")
    return res.suggestion.lr


# --- outputs ---------------------------------------------------------------------------------


def write_result(res: LRFindResult, out_dir: Path) -> tuple[Path, Path]:
    """lr_find.json and lr_find.png in `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "lr_find.json"
    write_file(js, json.dumps(res.to_json(), indent=1, default=_nan_to_str))
    png = out_dir / "lr_find.png"
    plot(res, png)
    return js, png


def _nan_to_str(v: Any) -> Any:
    return str(v)


def plot(res: LRFindResult, out: Path) -> None:
    from steplab.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(res.lrs, res.losses, color="C0", alpha=0.35, lw=1, label="loss per step")
    ax.plot(res.lrs, res.smoothed, color="C0", lw=2, label="smoothed")
    sug = res.suggestion
    for name, value, color in (("min/10", sug.min10, "C2"), ("steepest", sug.steepest, "C1")):
        chosen = " (recommended)" if (name.replace("/", "") == sug.rule) else ""
        ax.axvline(value, color=color, ls="--", lw=1.5, label=f"{name} {value:.2g}{chosen}")
    ax.axvline(sug.minimum, color="grey", ls=":", lw=1, label=f"minimum {sug.minimum:.2g}")
    finite = [v for v in res.smoothed if math.isfinite(v)]
    if finite:  # keep the blow-up from squashing the interesting part
        lo, hi = min(finite), max(finite[: max(1, len(finite) // 10)])
        ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.25 * (hi - lo))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: {res.optimizer}, {len(res.lrs)} steps ({res.stopped})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
