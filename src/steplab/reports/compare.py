"""A compare's report: ``compare.md``, ``results.json`` and two loss plots, from what
`steplab.tools.compare.compare` read back from the run directories.

The Markdown is `steplab.reports.document`'s (the same `Section` and `Table` as
`steplab report`); the terminal gets the same table (`print_table`: rich on a terminal,
Markdown in a pipe). The plots give each variant a stable colour and a legend that says
what it changes (``Muon lr=1e-2``, ``AdamW lr=1e-3 (seed)``), and mark diverged variants.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from steplab import __version__
from steplab.atomic import write_file
from steplab.progress import plural
from steplab.reports.document import Section, Table, render_markdown
from steplab.reports.labels import variant_label
from steplab.tools.compare import ALPHA, Comparison, Row

PLOTS = {"train_seconds": "loss_vs_time.png", "tokens": "loss_vs_tokens.png"}


def _mean_of(values: list[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def _loss_cell(row: Row) -> str:
    n, ok = len(row.runs), len(row.losses)
    if row.mean is None:
        return "diverged" if row.diverged else "no result"
    cell = f"{row.mean:.4f}" + (f" ± {row.std:.4f}" if ok > 1 else "")
    return cell + ("" if ok == n else f" ({ok}/{n} seeds)")


def _vs_best_cells(row: Row) -> tuple[str, str]:
    """The test's verdict (``worse (p=0.003)``) and the gap to the best with its confidence
    interval (``+0.0512 [+0.031, +0.072]``)."""
    if row.rank == 1:
        return "best", "-"
    if row.diff_vs_best is None:
        return "-", "-"
    gap = f"{row.diff_vs_best:+.4f}"
    if row.p_vs_best is None or row.diff_low is None or row.diff_high is None:
        return "n/a (1 seed)", gap
    verdict = "worse" if row.significant else "not significant"
    return f"{verdict} (p={row.p_vs_best:.3f})", f"{gap} [{row.diff_low:+.3f}, {row.diff_high:+.3f}]"


def _target_cells(row: Row, target: float | None) -> tuple[str, str]:
    if target is None:
        return "-", "-"
    hit = [r for r in row.runs if r.seconds_to_target is not None]
    if not hit:
        return "not reached", "not reached"
    secs = sum(r.seconds_to_target or 0.0 for r in hit) / len(hit)
    toks = sum(r.tokens_to_target or 0 for r in hit) / len(hit)
    note = "" if len(hit) == len(row.runs) else f" ({len(hit)}/{len(row.runs)} seeds)"
    return f"{secs:.1f} s{note}", f"{toks / 1e6:.2f}M{note}"


def results_table(rows: list[Row], target: float | None) -> Table:
    """The ranked variants as a `Table` (the same in compare.md and on the terminal)."""
    kind = next((r.mem_kind for row in rows for r in row.runs if r.mem_kind), None)
    mem_head = "peak CUDA MiB" if kind == "cuda_max_allocated" else "peak RSS MiB"
    at = f" {target:g}" if target is not None else " target"
    headers = ["rank", "variant", "lr", "final val loss", "vs best (p)", "gap [95% CI]", f"time to{at}"]
    headers += [f"tokens to{at}", "tokens/s", mem_head, "optimizer state MiB", "steps"]
    body = []
    for row in rows:
        secs, toks = _target_cells(row, target)
        tps = _mean_of([r.tokens_per_second for r in row.runs])
        mem = _mean_of([r.peak_mem_mb for r in row.runs])
        state = _mean_of([r.optimizer_state_mb for r in row.runs])
        steps = _mean_of([float(r.steps) for r in row.runs])
        body.append(
            [
                str(row.rank or "-"),
                row.label,
                f"{row.lr:g}" + (" (default)" if row.lr_source.startswith("default") else ""),
                _loss_cell(row),
                *_vs_best_cells(row),
                secs,
                toks,
                f"{tps:,.0f}" if tps else "-",
                f"{mem:,.0f}" if mem else "-",
                f"{state:.2f}" if state is not None else "-",
                f"{steps:.0f}" if steps is not None else "-",
            ]
        )
    return Table(headers, body)


def notes(c: Comparison) -> str:
    """What the columns mean, as paragraphs."""
    n_seeds = len(c.plan.seeds)
    paragraphs = [
        "vs best: Welch's t-test of the final validation losses against the best variant "
        f"(scipy.stats.ttest_ind, unequal variances, two-sided; 'worse' at p < {ALPHA:g}). gap: the "
        f"variant's mean minus the best's, with the {1 - ALPHA:.0%} confidence interval of that "
        "difference."
        + (
            " With 1 seed per variant there is nothing to test: run with --seeds 2 or more."
            if n_seeds == 1
            else f" With {n_seeds} seeds per variant the test has few degrees of freedom: only large "
            "gaps come out significant, and the intervals are wide."
            if n_seeds <= 3
            else ""
        ),
        "time to target: training seconds (evaluation excluded) at the first evaluation at or below the "
        "target; the resolution is the evaluation interval. tokens/s: training tokens / training seconds.",
        "memory: on CUDA, the run's peak allocated by tensors; on CPU, the resident memory of the compare "
        "process (every run of a compare shares it, so compare it across rows with care). optimizer state "
        "is exact: the bytes of the optimizer's tensors.",
        "lr: '(default)' marks an optimizer's tuned default (steplab optimizers); other rows use the "
        "config's or the given learning rate. Sources: "
        + "; ".join(f"{v.label}: {c.plan.lr_sources[v.label]}" for v in c.plan.variants),
    ]
    if c.status != "finished":
        paragraphs.append(
            f"Incomplete: {len(c.results)} of {plural(c.planned, 'run')} have results (compare was "
            "interrupted; run the same command again to continue)."
        )
    return "\n\n".join(paragraphs)


def legends(c: Comparison) -> dict[str, str]:
    """Each variant's legend: what it sets, not its directory name."""
    out = {}
    for v in c.plan.variants:
        lr = c.plan.configs[v.label, c.plan.seeds[0]].optim.lr
        out[v.label] = variant_label(v.label, v.overrides, named=v.named, lr=float(lr))
    return out


def plot(c: Comparison) -> list[Path]:
    """Loss against training time and tokens, the first seed of each variant."""
    from steplab.reports.plots import X_LABELS, loss_curves

    first = {row.label: Path(row.runs[0].run_dir) for row in c.rows if row.runs}
    diverged = {row.label for row in c.rows if row.diverged}
    paths = []
    for x, name in PLOTS.items():
        title = f"loss against {X_LABELS[x].removesuffix(' (s)')} (first seed of each variant)"
        loss_curves(first, c.out / name, x=x, title=title, legends=legends(c), diverged=diverged)
        paths.append(c.out / name)
    return paths


def write_report(c: Comparison, *, command: str = "steplab compare") -> dict[str, Path]:
    """compare.md, results.json and the loss plots in the compare directory; returns their paths."""
    images = plot(c)
    seeds = ("seed " if len(c.plan.seeds) == 1 else "seeds ") + ", ".join(map(str, c.plan.seeds))
    sections = [
        Section(
            "Results",
            text=f"{plural(len(c.plan.variants), 'variant')}, {seeds}. Final validation loss is over "
            "the whole validation split (or the config's eval.max_windows subset), mean ± sample std "
            "over seeds; lower is better.",
            table=results_table(c.rows, c.target),
        ),
        Section("Notes", text=notes(c)),
        Section("Plots", images=images),
        Section("Command", blocks=[("run it again to resume, or to redraw this report", command)]),
    ]
    meta = f"written {time.strftime('%Y-%m-%d %H:%M:%S %z')} by steplab {__version__} in {c.out}"
    md = c.out / "compare.md"
    write_file(md, render_markdown("steplab compare", sections, meta, c.out))
    results = {
        "command": command,
        "target_loss": c.target,
        "status": c.status,
        "variants": [
            {k: v for k, v in asdict(row).items() if k != "runs"} | {"runs": [asdict(r) for r in row.runs]}
            for row in c.rows
        ],
    }
    js = c.out / "results.json"
    write_file(js, json.dumps(results, indent=1))
    return {"markdown": md, "results": js, **{p.stem: p for p in images}}
