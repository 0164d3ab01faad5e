"""A local scaling law: loss as a function of model size and training tokens, fitted on this corpus.

    L(N, D) = E + A / N**alpha + B / D**beta

(Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models", approach 3), with N
the matmul parameters and D the training tokens. The points come from a few short proxy
runs of different sizes, each evaluated several times along the way, so one fit sees every
(N, D, loss) the search measured. Chinchilla's own constants (tokens per parameter about
20) are a prior, not the answer: at the budgets of a CPU and on a particular corpus the
optimum differs, which is why the fit is redone for every corpus and machine.

The fit has five parameters and is made from a dozen noisy points, so it is checked before
it is trusted (`Fit.trusted`): enough points and sizes, exponents inside their bounds, a
good R². When it is not, `compute_optimal_size` falls back to a rule that needs no fit:
the size that did best at equal proxy time, scaled up by the square root of the ratio of
final to proxy compute (compute-optimal N grows as C^0.5 in both Chinchilla and Kaplan's
reanalysis).

Everything here is a pure function of numbers: no torch, no files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

EXPONENT_BOUNDS = (0.05, 1.5)
MIN_POINTS, MIN_SIZES, MIN_R2 = 6, 3, 0.8


@dataclass(frozen=True)
class Point:
    params: float  # N: matmul parameters
    tokens: float  # D: training tokens seen at this evaluation
    loss: float  # validation loss (nats per token)


@dataclass(frozen=True)
class Fit:
    e: float
    a: float
    alpha: float
    b: float
    beta: float
    r2: float
    points: int
    sizes: int

    def loss(self, params: float, tokens: float) -> float:
        return self.e + self.a * params**-self.alpha + self.b * tokens**-self.beta

    @property
    def trusted(self) -> bool:
        lo, hi = EXPONENT_BOUNDS
        inside = all(lo * 1.01 < x < hi * 0.99 for x in (self.alpha, self.beta))
        return self.points >= MIN_POINTS and self.sizes >= MIN_SIZES and inside and self.r2 >= MIN_R2


def fit_scaling_law(points: Sequence[Point]) -> Fit | None:
    """Least-squares fit of `L(N, D)` to `points` (in log-parameters, with bounds); None when
    there are too few finite points to try."""
    from scipy.optimize import least_squares

    pts = [p for p in points if all(math.isfinite(v) and v > 0 for v in (p.params, p.tokens, p.loss))]
    if len(pts) < 5:
        return None
    n = np.array([p.params for p in pts])
    d = np.array([p.tokens for p in pts])
    y = np.array([p.loss for p in pts])
    n0, d0 = float(np.median(n)), float(np.median(d))  # scale N and D near 1: a well-posed problem

    def model(theta: np.ndarray) -> np.ndarray:
        e, log_a, alpha, log_b, beta = theta
        return e + np.exp(log_a) * (n / n0) ** -alpha + np.exp(log_b) * (d / d0) ** -beta

    lo, hi = EXPONENT_BOUNDS
    best = None
    for alpha0 in (0.3, 0.7):  # two starts: the problem is not convex
        for beta0 in (0.3, 0.7):
            theta0 = np.array(
                [0.5 * y.min(), math.log(0.25 * y.mean()), alpha0, math.log(0.25 * y.mean()), beta0]
            )
            res = least_squares(
                lambda t: model(t) - y,
                theta0,
                bounds=([0.0, -20.0, lo, -20.0, lo], [float(y.min()), 20.0, hi, 20.0, hi]),
            )
            if best is None or res.cost < best.cost:
                best = res
    assert best is not None
    e, log_a, alpha, log_b, beta = (float(v) for v in best.x)
    resid = model(best.x) - y
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / total if total > 0 else 0.0
    # back to unscaled N and D: A / (N/n0)^alpha = (A * n0^alpha) / N^alpha
    return Fit(
        e=e,
        a=math.exp(log_a) * n0**alpha,
        alpha=alpha,
        b=math.exp(log_b) * d0**beta,
        beta=beta,
        r2=r2,
        points=len(pts),
        sizes=len({p.params for p in pts}),
    )


@dataclass(frozen=True)
class Candidate:
    name: str
    params: float  # matmul parameters
    tokens_per_second: float  # measured on this machine


@dataclass(frozen=True)
class SizeChoice:
    name: str
    rule: str  # "fit" or "fallback"
    predicted: dict[str, float]  # candidate -> predicted final loss (fit) or score (fallback)
    reason: str


def compute_optimal_size(
    fit: Fit | None,
    candidates: Sequence[Candidate],
    seconds: float,
    *,
    proxy_best: str,
    proxy_seconds: float,
    seen_params: Sequence[float] = (),
    max_extrapolation: float = 4.0,
) -> SizeChoice:
    """The candidate with the lowest loss after `seconds` of training at its measured speed.

    With a trusted fit: argmin over candidates of L(N, tokens_per_second * seconds), among
    candidates at most `max_extrapolation` times larger than the largest size the fit saw
    (`seen_params`: a fit has no opinion far beyond its data). Otherwise the fallback rule (module docstring):
    the proxy winner `proxy_best`'s parameters times sqrt(seconds / proxy_seconds), rounded
    to the nearest candidate in log space.
    """
    if not candidates:
        raise ValueError("no size candidates")
    by_name = {c.name: c for c in candidates}
    if fit is not None and fit.trusted:
        limit = max_extrapolation * max(seen_params) if seen_params else math.inf
        predicted = {
            c.name: fit.loss(c.params, c.tokens_per_second * seconds) for c in candidates if c.params <= limit
        }
        best = min(predicted, key=predicted.__getitem__)
        return SizeChoice(
            best,
            "fit",
            predicted,
            f"lowest predicted loss {predicted[best]:.4f} after {seconds:.0f} s "
            f"(fit: E={fit.e:.3f}, alpha={fit.alpha:.2f}, beta={fit.beta:.2f}, R2={fit.r2:.3f})",
        )
    base = by_name[proxy_best].params
    target = base * math.sqrt(max(seconds, 1e-9) / max(proxy_seconds, 1e-9))
    target = min(target, base * max_extrapolation)
    score = {c.name: abs(math.log(c.params / target)) for c in candidates}
    best = min(score, key=score.__getitem__)
    return SizeChoice(
        best,
        "fallback",
        score,
        f"{proxy_best} won at {proxy_seconds:.0f} s; compute-optimal N grows as C^0.5: "
        f"{base:,.0f} x sqrt({seconds:.0f}/{proxy_seconds:.0f}) = {target:,.0f} parameters",
    )
