"""A compare's numbers: each run's result read back from its directory, and the variants
ranked over seeds with a Welch t-test against the best.

Everything here is rebuilt from the run directories alone (``summary.json`` and
``metrics.jsonl``), so a report can be redrawn from a copied compare directory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from steplab.rundir import finite_number, read_json, read_metrics
from steplab.stats import mean_std, welch_t_test

ALPHA = 0.05  # significance level of "worse than the best"


@dataclass
class RunResult:
    label: str
    seed: int
    run_dir: str
    status: str
    lr: float
    lr_source: str
    val_loss: float | None = None
    steps: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    tokens_per_second: float | None = None
    seconds_to_target: float | None = None
    tokens_to_target: int | None = None
    peak_mem_mb: float | None = None
    mem_kind: str | None = None  # "cuda_max_allocated" or "process_rss"
    optimizer_state_mb: float | None = None


_num = finite_number  # a stored number that is finite, else None (damaged values read as missing)


def peak_memory(
    summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]]
) -> tuple[float | None, str | None]:
    """The run's peak memory and its kind: what summary.json says (the loop's own peak), else
    the largest value its metrics records logged (CUDA peak allocated, or the process RSS
    sampled at each log step on CPU)."""
    for key, kind in (("peak_mem_mb", "cuda_max_allocated"), ("rss_mb", "process_rss")):
        v = _num(summary.get(key))
        if v is not None:
            return v, kind
    for key, kind in (("peak_mem_mb", "cuda_max_allocated"), ("rss_mb", "process_rss")):
        values = [v for r in records if (v := _num(r.get(key))) is not None]
        if values:
            return max(values), kind
    return None, None


def read_run(
    run_dir: Path, *, label: str, seed: int, lr: float, lr_source: str, target: float | None
) -> RunResult:
    """A run's result from its summary.json and metrics.jsonl alone."""
    summary = read_json(run_dir / "summary.json")
    records = read_metrics(run_dir / "metrics.jsonl")
    res = RunResult(label, seed, str(run_dir), str(summary.get("status", "missing")), lr, lr_source)
    res.val_loss = _num(summary.get("val_loss"))
    res.steps, res.tokens = int(_num(summary.get("step")) or 0), int(_num(summary.get("tokens")) or 0)
    res.train_seconds = _num(summary.get("train_seconds")) or 0.0
    if res.train_seconds > 0:
        res.tokens_per_second = res.tokens / res.train_seconds
    if target is not None:
        for r in records:
            loss = _num(r.get("val_loss"))
            if loss is not None and loss <= target:
                res.seconds_to_target, res.tokens_to_target = (
                    _num(r.get("train_seconds")),
                    int(_num(r.get("tokens")) or 0),
                )
                break
    res.peak_mem_mb, res.mem_kind = peak_memory(summary, records)
    res.optimizer_state_mb = _num(summary.get("optimizer_state_mb"))
    return res


@dataclass
class Row:
    """One variant over its seeds; `diff_*` is its mean minus the best's, with the confidence
    interval of that difference (Welch), None for the best and below two seeds."""

    label: str
    lr: float
    lr_source: str
    runs: list[RunResult] = field(default_factory=list)
    mean: float | None = None
    std: float | None = None
    rank: int | None = None
    p_vs_best: float | None = None
    significant: bool | None = None
    diff_vs_best: float | None = None
    diff_low: float | None = None
    diff_high: float | None = None

    @property
    def losses(self) -> list[float]:
        return [r.val_loss for r in self.runs if r.val_loss is not None]

    @property
    def diverged(self) -> bool:
        return any(r.status == "diverged" for r in self.runs)


def aggregate(results: Sequence[RunResult], alpha: float = ALPHA) -> list[Row]:
    """Rows ranked by mean final validation loss, each tested against the best."""
    rows: dict[str, Row] = {}
    for r in results:
        rows.setdefault(r.label, Row(r.label, r.lr, r.lr_source)).runs.append(r)
    for row in rows.values():
        if row.losses:
            row.mean, row.std = mean_std(row.losses)
    ranked = sorted(rows.values(), key=lambda r: (r.mean is None, r.mean if r.mean is not None else 0.0))
    best = ranked[0] if ranked and ranked[0].mean is not None else None
    for i, row in enumerate(ranked, 1):
        row.rank = i if row.mean is not None else None
        if best is None or row is best or row.mean is None:
            continue
        row.diff_vs_best = row.mean - (best.mean or 0.0)
        test = welch_t_test(row.losses, best.losses, level=1 - alpha)
        if test is not None:
            row.p_vs_best, row.significant = test.p, test.p < alpha
            row.diff_low, row.diff_high = test.low, test.high
    return ranked
