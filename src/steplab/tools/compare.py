"""`steplab compare`: which optimizer, which architecture, measured on your data and budget.

Every variant (the cartesian product of the ``--vary`` settings, plus any named
``--variant``) is trained once per seed on the same data, seeds and budget. Each run is a
normal run directory under the compare directory, trained by `steplab.loop.fit.train`, so it
can be sampled, evaluated or resumed like any other. Running the same command again skips
finished runs and resumes interrupted ones from their newest checkpoint.

The report is rebuilt from the run directories alone: final validation loss (mean ± std
over seeds), time and tokens to a target loss, tokens per second, memory, and a Welch
t-test of each variant against the best; loss-vs-time and loss-vs-tokens plots; a Markdown
report (`compare.md`) and `results.json`.

Learning rates: when the optimizer is what varies, each variant gets its optimizer's
tuned default (`steplab.optim.DEFAULT_LR`) unless ``--optim.lr`` is given or
``optim.lr`` is itself varied; when the optimizer does not vary, the config's learning
rate is used as is.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from steplab.config import RunConfig, flatten, to_dict
from steplab.errors import ConfigError, SteplabError
from steplab.loop.fit import TrainState, tokens_per_step, train
from steplab.loop.hooks import Callback
from steplab.loop.session import Session, check
from steplab.optim import DEFAULT_LR, state_bytes
from steplab.progress import fmt_duration
from steplab.rundir import read_json, read_metrics
from steplab.stats import mean_std, welch_t_test

DONE = ("finished", "target", "diverged", "stopped")  # statuses that need no more training


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a label and the settings it changes."""

    label: str
    overrides: tuple[tuple[str, str], ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.label).strip("_") or "variant"


@dataclass(frozen=True)
class Budget:
    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.steps, self.tokens, self.seconds))


# --- planning ---------------------------------------------------------------------------------


def parse_vary(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2`` strings → [(key, [values])]; keys use the flag spelling (``optim.name``)."""
    out: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise ConfigError(f"--vary must be KEY=V1,V2,... (got {spec!r})")
        if any(key == k for k, _ in out):
            raise ConfigError(f"--vary {key} is given twice (list all its values in one --vary)")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--vary {key}: a value is listed twice ({values})")
        out.append((key, vals))
    return out


def parse_variant(tokens: Sequence[str]) -> Variant:
    """``NAME KEY=VALUE ...`` → a named variant (one explicit row, e.g. a reference setting)."""
    if not tokens or "=" in tokens[0]:
        raise ConfigError(f"--variant must be NAME KEY=VALUE ... (got {' '.join(tokens)!r})")
    pairs = []
    for tok in tokens[1:]:
        key, sep, value = tok.partition("=")
        if not sep or not key:
            raise ConfigError(f"--variant {tokens[0]}: expected KEY=VALUE (got {tok!r})")
        pairs.append((key.strip().lstrip("-").replace("-", "_"), value.strip()))
    return Variant(tokens[0], tuple(pairs))


def plan_variants(vary: Sequence[tuple[str, list[str]]], named: Sequence[Variant] = ()) -> list[Variant]:
    """The cartesian product of the varied values, then the named variants; labels are unique."""
    out: list[Variant] = []
    if vary:
        keys = [k for k, _ in vary]
        for combo in itertools.product(*(vals for _, vals in vary)):
            out.append(Variant(", ".join(combo), tuple(zip(keys, combo, strict=True))))
    out += named
    if not out:
        out = [Variant("base", ())]
    labels = [v.label for v in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"compare: variant label {dup[0]!r} is used twice")
    slugs = [v.slug for v in out]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"compare: two variants map to the same directory name ({', '.join(slugs)})")
    return out


def eval_every(cfg: RunConfig, target: float | None) -> int:
    """The config's interval; with a target but no interval, about 20 evaluations per run
    (every 100 steps on a time budget), so that time-to-target is measured."""
    t = cfg.train
    if cfg.eval.every or target is None:
        return cfg.eval.every
    if t.max_seconds:
        return 100
    limits = [t.max_steps, t.max_tokens // tokens_per_step(cfg) if t.max_tokens else None]
    return max(1, min(x for x in limits if x) // 20)


def variant_config(
    base: RunConfig,
    v: Variant,
    *,
    optim_varies: bool,
    lr_fixed: bool,
    budget: Budget,
    seed: int,
    target: float | None = None,
) -> tuple[RunConfig, str]:
    """The config of one run, and where its learning rate came from."""
    from steplab.config import set_value

    cfg = copy.deepcopy(base)
    for key, value in v.overrides:
        set_value(cfg, key, value, where=f"--vary {key}")
    check(cfg)  # an unknown optimizer is named here, with the valid ones
    keys = {k for k, _ in v.overrides}
    if "optim.lr" in keys or lr_fixed:
        lr_source = "set"
    elif optim_varies:
        if cfg.optim.name not in DEFAULT_LR:
            raise ConfigError(f"compare: no default learning rate for {cfg.optim.name}; set --optim.lr")
        cfg.optim.lr, lr_source = DEFAULT_LR[cfg.optim.name], f"default for {cfg.optim.name}"
    else:
        lr_source = "config"
    if isinstance(cfg.optim.lr, str):
        raise ConfigError("compare: --optim.lr auto is not supported here; give a number (or leave it unset)")
    if budget.given():
        t = cfg.train
        t.max_steps, t.max_tokens, t.max_seconds = budget.steps, budget.tokens, budget.seconds
    cfg.train.seed = seed
    cfg.eval.every = eval_every(cfg, target)
    if cfg.checkpoint.every == 0 and cfg.eval.every:  # an interrupted compare resumes from there
        cfg.checkpoint.every = cfg.eval.every
    return check(cfg), lr_source


# --- one run's numbers, read back from its directory --------------------------------------------


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
    mem_kind: str | None = None
    optimizer_state_mb: float | None = None


def read_run(
    run_dir: Path, *, label: str, seed: int, lr: float, lr_source: str, target: float | None
) -> RunResult:
    """A run's result from summary.json, metrics.jsonl and resources.json alone."""
    summary = read_json(run_dir / "summary.json")
    res = RunResult(label, seed, str(run_dir), summary.get("status", "missing"), lr, lr_source)
    v = summary.get("val_loss")
    res.val_loss = float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
    res.steps, res.tokens = int(summary.get("step", 0)), int(summary.get("tokens", 0))
    res.train_seconds = float(summary.get("train_seconds", 0.0))
    if res.train_seconds > 0:
        res.tokens_per_second = res.tokens / res.train_seconds
    if target is not None:
        for r in read_metrics(run_dir / "metrics.jsonl"):
            loss = r.get("val_loss")
            if isinstance(loss, (int, float)) and loss <= target:
                res.seconds_to_target, res.tokens_to_target = float(r["train_seconds"]), int(r["tokens"])
                break
    resources = read_json(run_dir / "resources.json")
    res.peak_mem_mb, res.mem_kind = resources.get("peak_mem_mb"), resources.get("mem_kind")
    res.optimizer_state_mb = resources.get("optimizer_state_mb")
    return res


def current_rss_mb() -> float | None:
    """Resident memory of this process now (Linux /proc), or None where unavailable."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Resources(Callback):
    """Memory of a run: CUDA peak allocated, or on CPU the process RSS sampled at each log/eval.

    The CPU figure is the whole process (Python, the corpus, allocator caches kept from earlier
    runs of the same compare), sampled rather than a true peak. The optimizer state is exact.
    """

    def __init__(self, run_dir: Path, device: torch.device) -> None:
        self.path = run_dir / "resources.json"
        self.device = device
        old = read_json(self.path)
        self.peak: float = float(old.get("peak_mem_mb") or 0.0)
        self.state_mb: float = float(old.get("optimizer_state_mb") or 0.0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

    def sample(self, s: Session) -> None:
        if self.device.type == "cuda":
            self.peak = max(self.peak, torch.cuda.max_memory_allocated(self.device) / 2**20)
        else:
            self.peak = max(self.peak, current_rss_mb() or 0.0)
        self.state_mb = max(self.state_mb, state_bytes(s.optimizer) / 2**20)

    def on_log(self, s: Session, state: TrainState, record: dict[str, Any]) -> None:
        self.sample(s)

    def on_eval(self, s: Session, state: TrainState, record: dict[str, Any]) -> None:
        self.sample(s)

    def write(self) -> None:
        kind = "cuda_max_allocated" if self.device.type == "cuda" else "process_rss_sampled"
        info = {"peak_mem_mb": self.peak or None, "mem_kind": kind, "optimizer_state_mb": self.state_mb}
        self.path.write_text(json.dumps(info, indent=1))


# --- aggregation and the report ----------------------------------------------------------------


@dataclass
class Row:
    label: str
    lr: float
    lr_source: str
    runs: list[RunResult] = field(default_factory=list)
    mean: float | None = None
    std: float | None = None
    rank: int | None = None
    p_vs_best: float | None = None
    significant: bool | None = None

    @property
    def losses(self) -> list[float]:
        return [r.val_loss for r in self.runs if r.val_loss is not None]


def aggregate(results: Sequence[RunResult], alpha: float = 0.05) -> list[Row]:
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
        if best is not None and row is not best and row.mean is not None:
            test = welch_t_test(row.losses, best.losses)
            if test is not None:
                row.p_vs_best = test[2]
                row.significant = test[2] < alpha
    return ranked


def _fmt_target(row: Row, target: float | None) -> tuple[str, str]:
    if target is None:
        return "-", "-"
    hit = [r for r in row.runs if r.seconds_to_target is not None]
    if not hit:
        return "not reached", "not reached"
    secs = sum(r.seconds_to_target or 0.0 for r in hit) / len(hit)
    toks = sum(r.tokens_to_target or 0 for r in hit) / len(hit)
    note = "" if len(hit) == len(row.runs) else f" ({len(hit)}/{len(row.runs)} seeds)"
    return f"{secs:.1f} s{note}", f"{toks / 1e6:.2f}M{note}"


def _mean_of(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def table(rows: Sequence[Row], target: float | None) -> str:
    """The Markdown results table."""
    mem_kind = next((r.mem_kind for row in rows for r in row.runs if r.mem_kind), None)
    mem_head = "peak CUDA MB" if mem_kind == "cuda_max_allocated" else "RSS MB (sampled)"
    head = [
        "rank",
        "variant",
        "lr",
        "final val loss",
        "vs best (p)",
        f"time to {target}" if target is not None else "time to target",
        f"tokens to {target}" if target is not None else "tokens to target",
        "tokens/s",
        mem_head,
        "optimizer state MB",
        "steps",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        n, ok = len(row.runs), len(row.losses)
        if row.mean is None:
            loss = "diverged" if any(r.status == "diverged" for r in row.runs) else "no result"
        else:
            loss = f"{row.mean:.4f}" + (f" ± {row.std:.4f}" if ok > 1 else "")
            loss += "" if ok == n else f" ({ok}/{n} seeds)"
        if row.rank == 1:
            sig = "best"
        elif row.p_vs_best is None:
            sig = "n/a (1 seed)" if row.mean is not None else "-"
        else:
            sig = f"{'worse' if row.significant else 'not significant'} (p={row.p_vs_best:.3f})"
        secs, toks = _fmt_target(row, target)
        tps, mem = (
            _mean_of([r.tokens_per_second for r in row.runs]),
            _mean_of([r.peak_mem_mb for r in row.runs]),
        )
        state = _mean_of([r.optimizer_state_mb for r in row.runs])
        steps = _mean_of([float(r.steps) for r in row.runs])
        cells = [
            str(row.rank or "-"),
            row.label,
            f"{row.lr:g}" + (" (default)" if row.lr_source.startswith("default") else ""),
            loss,
            sig,
            secs,
            toks,
            f"{tps:,.0f}" if tps else "-",
            f"{mem:,.0f}" if mem else "-",
            f"{state:.2f}" if state is not None else "-",
            f"{steps:.0f}" if steps is not None else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(
    out: Path, rows: Sequence[Row], *, target: float | None, command: str, notes: Sequence[str]
) -> None:
    """compare.md, results.json and the two loss plots, from the runs' directories."""
    from steplab.reports.plots import loss_curves

    first = {row.label: Path(row.runs[0].run_dir) for row in rows if row.runs}
    plots = {}
    for x, name in (("train_seconds", "loss_vs_time.png"), ("tokens", "loss_vs_tokens.png")):
        title = f"first seed of each variant, against {x.replace('_', ' ')}"
        loss_curves(first, out / name, x=x, title=title, smoothing=0.5)  # few log points: light smoothing
        plots[x] = name
    seeds = sorted({r.seed for row in rows for r in row.runs})
    n_seeds = len(seeds)
    md = [
        "# steplab compare",
        "",
        "```",
        command,
        "```",
        "",
        f"Seeds: {', '.join(map(str, seeds))}. Final validation loss is over the whole validation split "
        "(or the config's `eval.max_windows` subset), mean ± sample std over seeds.",
        "",
        table(rows, target),
        "",
        "Notes:",
        "",
        "- *vs best*: Welch's t-test of the final validation losses against the best variant, "
        "two-sided, 'worse' at p < 0.05."
        + (
            f" With {n_seeds} seeds per variant the test has about {max(n_seeds * 2 - 2, 1)} or fewer degrees "
            "of freedom: only large gaps come out significant."
            if n_seeds <= 3
            else ""
        ),
        "- *time to target*: training seconds (evaluation excluded) at the first evaluation at or below "
        "the target; the resolution is the evaluation interval.",
        "- *tokens/s*: training tokens / training seconds (evaluation excluded).",
        "- *memory*: on CUDA, `torch.cuda.max_memory_allocated` of the run; on CPU, the resident memory of "
        "the whole compare process sampled at each log step (includes the corpus and memory kept from "
        "earlier runs: compare it across rows with care). *optimizer state* is exact: the bytes of the "
        "optimizer's tensors.",
        *[f"- {n}" for n in notes],
        "",
        f"![loss against training time]({plots['train_seconds']})",
        "",
        f"![loss against training tokens]({plots['tokens']})",
        "",
    ]
    (out / "compare.md").write_text("\n".join(md))
    results = {
        "command": command,
        "target_loss": target,
        "variants": [
            {k: v for k, v in asdict(row).items() if k != "runs"} | {"runs": [asdict(r) for r in row.runs]}
            for row in rows
        ],
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))


# --- the driver --------------------------------------------------------------------------------


@dataclass
class Plan:
    variants: list[Variant]
    seeds: list[int]
    configs: dict[tuple[str, int], RunConfig]
    lr_sources: dict[str, str]


def make_plan(
    base: RunConfig,
    variants: Sequence[Variant],
    *,
    seeds: int,
    budget: Budget,
    lr_fixed: bool,
    target: float | None = None,
) -> Plan:
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (got {seeds})")
    seed_list = [base.train.seed + i for i in range(seeds)]
    optim_varies = any(k == "optim.name" for v in variants for k, _ in v.overrides)
    configs, sources = {}, {}
    for v in variants:
        for seed in seed_list:
            cfg, src = variant_config(
                base,
                v,
                optim_varies=optim_varies,
                lr_fixed=lr_fixed,
                budget=budget,
                seed=seed,
                target=target,
            )
            configs[v.label, seed], sources[v.label] = cfg, src
    return Plan(list(variants), seed_list, configs, sources)


def default_out(base: RunConfig, plan: Plan) -> Path:
    """runs/compare-PRESET-HASH: the same command finds the same directory (and resumes it)."""
    blob = json.dumps({k[0] + str(k[1]): to_dict(c) for k, c in plan.configs.items()}, sort_keys=True)
    return Path("runs") / f"compare-{base.preset}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"


_IGNORED = {"model.vocab_size", "train.progress", "train.tensorboard"}


def check_same_config(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse to continue a run that was started with other settings (another command, same --out)."""
    path = run_dir / "config.toml"
    if not path.exists():
        return
    from steplab.config import load_toml

    old, new = flatten(to_dict(load_toml(path))), flatten(to_dict(cfg))
    diff = sorted(k for k in set(old) | set(new) if k not in _IGNORED and old.get(k) != new.get(k))
    if diff:
        k = diff[0]
        raise SteplabError(
            f"{run_dir} holds a run with other settings ({k}: {old.get(k)} there, {new.get(k)} now); "
            "use another --out or pass --overwrite"
        )


def run_state(run_dir: Path) -> str:
    """'done', 'resume' (a checkpoint to continue from), 'restart' (a run without one) or 'new'."""
    from steplab import checkpoint as ckpt

    status = read_json(run_dir / "summary.json").get("status")
    if status in DONE:
        return "done"
    if ckpt.list_steps(ckpt.checkpoint_dir(run_dir)):
        return "resume"
    return "restart" if (run_dir / "metrics.jsonl").exists() else "new"


def compare(
    plan: Plan,
    out: Path,
    *,
    target: float | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    command: str = "steplab compare",
) -> tuple[list[Row], str]:
    """Train every planned run that is not done yet, then write the report; returns (rows, status)."""
    from steplab.runtime import resolve_device

    out.mkdir(parents=True, exist_ok=True)
    runs = [(v, seed) for v in plan.variants for seed in plan.seeds]
    dirs = {(v.label, seed): out / "runs" / v.slug / f"seed-{seed}" for v, seed in runs}
    if not overwrite:
        for (label, seed), d in dirs.items():
            check_same_config(d, plan.configs[label, seed])
    walls: list[float] = []
    status = "finished"
    todo = [(v, s) for v, s in runs if overwrite or run_state(dirs[v.label, s]) != "done"]
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    say(
        f"compare: {len(plan.variants)} variants x {len(plan.seeds)} seeds; {len(runs) - len(todo)} done; {out}"
    )
    for i, (v, seed) in enumerate(todo):
        run_dir, cfg = dirs[v.label, seed], copy.deepcopy(plan.configs[v.label, seed])
        state = "new" if overwrite else run_state(run_dir)
        left = len(todo) - i
        if walls:
            eta = f"ETA {fmt_duration(sum(walls) / len(walls) * left)}"
        elif cfg.train.max_seconds and not (cfg.train.max_steps or cfg.train.max_tokens):
            eta = f"ETA >= {fmt_duration(cfg.train.max_seconds * left)} (plus evaluation)"
        else:
            eta = "ETA after the first run"
        say(
            f"compare [{len(runs) - left + 1}/{len(runs)}] {v.label}  seed {seed}  lr {cfg.optim.lr:g}"
            f"{'  (resuming)' if state == 'resume' else ''}  {eta}"
        )
        cfg.train.progress = cfg.train.progress and not quiet
        resources = Resources(run_dir, resolve_device(cfg.train.device))
        t0 = time.perf_counter()
        result = train(
            cfg,
            run_dir,
            resume=state == "resume",
            overwrite=overwrite or state == "restart",
            callbacks=[resources],
            progress=cfg.train.progress,
        )
        resources.write()
        walls.append(time.perf_counter() - t0)
        if result.status == "interrupted":
            status = "interrupted"
            say("compare interrupted: run the same command again to continue where it stopped")
            break
    results = [
        read_run(
            dirs[v.label, seed],
            label=v.label,
            seed=seed,
            lr=float(plan.configs[v.label, seed].optim.lr),
            lr_source=plan.lr_sources[v.label],
            target=target,
        )
        for v, seed in runs
        if (dirs[v.label, seed] / "summary.json").exists()
    ]
    rows = aggregate(results)
    notes = [
        "*lr*: '(default)' marks an optimizer's tuned default (`steplab optimizers`); other rows use "
        "the config's or the given learning rate. Sources: "
        + "; ".join(f"{v.label}: {plan.lr_sources[v.label]}" for v in plan.variants)
    ]
    if status != "finished":
        notes.append(
            f"**incomplete**: {len(results)} of {len(runs)} runs have results (compare was interrupted)"
        )
    if rows:
        write_report(out, rows, target=target, command=command, notes=notes)
    return rows, status
