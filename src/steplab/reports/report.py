"""Run reports: one self-contained HTML file and its Markdown twin, rebuilt from run directories.

A report holds what a person needs to judge one or several runs in a minute: an overview
table, the config and where the runs differ, final metrics, the loss curves and a training
dashboard, a few seeded samples from each model, and the hardware and versions. The HTML
embeds its images as base64 PNG and loads nothing from the network, so it opens anywhere
(mail it, attach it to an issue). The Markdown twin links the same PNGs from a
``NAME_files/`` directory beside it.

`build_report` is the one entry point of `steplab report`; its pieces (`Section`, `Table`,
the renderers in `steplab.reports.document`) also write `compare`'s ``compare.md``, and a
caller may add its own `Section`s (a results table, a study summary) rendered the same way.
With `progress`, the person watching sees the plotting and a bar over the samples (plain
lines when the output is not a terminal).
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steplab import __version__
from steplab.atomic import write_file
from steplab.config import flatten
from steplab.errors import SteplabError
from steplab.progress import ProgressView, plural, working
from steplab.reports.document import Section, Table, render_html, render_markdown  # noqa: F401 - importable from here
from steplab.reports.runs import COLUMNS, Run, format_cell, load_runs


@dataclass
class Report:
    html: Path
    markdown: Path
    sections: list[Section]


# --- sections built from runs ---------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def overview(runs: Sequence[Run]) -> Section:
    rows = [r.row() for r in runs]
    table = Table(
        [title for _, title in COLUMNS], [[format_cell(k, row.get(k)) for k, _ in COLUMNS] for row in rows]
    )
    return Section("Runs", table=table)


def config_section(runs: Sequence[Run]) -> Section:
    """One run: its whole config. Several: the settings that differ, the shared ones folded away."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    if len(runs) == 1:
        return Section("Config", table=Table(["setting", "value"], [[k, _fmt(flat[0][k])] for k in keys]))
    missing = object()
    differ = [k for k in keys if len({json.dumps(f.get(k, missing), default=str) for f in flat}) > 1]
    same = [k for k in keys if k not in differ]
    names = [r.name for r in runs]
    if differ:
        text = f"{len(differ)} setting(s) differ between the runs; {len(same)} are shared."
        table = Table(["setting", *names], [[k, *(_fmt(f.get(k)) for f in flat)] for k in differ])
    else:
        text, table = "The runs share every setting.", None
    shared = Section(
        "Shared settings", table=Table(["setting", "value"], [[k, _fmt(flat[0][k])] for k in same])
    )
    return Section("Config differences", text=text, table=table, collapsed=shared)


def metrics_section(runs: Sequence[Run]) -> Section:
    headers = [
        "run",
        "status",
        "steps",
        "tokens",
        "training time",
        "wall time",
        "last train loss",
        "final val loss",
        "final perplexity",
        "final bits/byte",
        "best val loss (step)",
        "median tokens/s",
        "peak memory",
    ]
    rows = []
    for r in runs:
        row = r.row()
        best = "-" if row["best_val_loss"] is None else f"{row['best_val_loss']:.4f} ({row['best_step']})"
        rows.append(
            [
                r.name,
                row["status"],
                _fmt(row["steps"]),
                format_cell("tokens", row["tokens"]),
                format_cell("train_seconds", row["train_seconds"]),
                format_cell("wall_seconds", row["wall_seconds"]),
                format_cell("train_loss", row["train_loss"]),
                _final(r, "val_loss", "{:.4f}"),
                _final(r, "val_ppl", "{:.2f}"),
                _final(r, "val_bpb", "{:.4f}"),
                best,
                format_cell("tokens_per_second", row["tokens_per_second"]),
                format_cell("peak_mem_mb", row["peak_mem_mb"]),
            ]
        )
    text = (
        "Losses are mean cross-entropy in nats per token; bits per byte divides by the UTF-8 bytes "
        "the tokens stand for, so runs with different tokenizers compare. Memory is the CUDA peak "
        "allocated by tensors on a GPU and the process's resident set on a CPU."
    )
    return Section("Final metrics", text=text, table=Table(headers, rows))


def _final(run: Run, key: str, spec: str) -> str:
    evals = run.evals
    return spec.format(evals[-1][key]) if evals and key in evals[-1] else "-"


def plots_section(runs: Sequence[Run], assets: Path) -> Section:
    from steplab.reports.labels import legends_of
    from steplab.reports.plots import dashboard, loss_curves

    sources = {r.name: r.records for r in runs}
    if not any(sources.values()):
        return Section("Plots", text="No metrics were logged.")
    legends, diverged = legends_of(runs)
    loss_png, dash_png = assets / "loss.png", assets / "dashboard.png"
    title = "train and validation loss"
    loss_curves(sources, loss_png, x="step", title=title, legends=legends, diverged=diverged)
    dashboard(sources, dash_png, legends=legends, diverged=diverged)
    return Section(
        "Plots",
        text="Train loss is an exponential moving average only when a run has enough log points for "
        "one (the raw values faint behind it); dashed lines with points are evaluations, drawn as "
        "they are. Each run keeps its colour in every figure; a diverged run is marked with an x.",
        images=[loss_png, dash_png],
    )


def sample_texts(
    run: Run,
    *,
    n: int,
    tokens: int,
    seed: int,
    prompt: str,
    device: str,
    temperature: float = 0.8,
    on_sample: Callable[[int], None] | None = None,
) -> list[str]:
    """`n` seeded samples from the run's newest checkpoint (sample i uses seed + i);
    `on_sample(i)` is called as each one is done (progress)."""
    import torch

    from steplab import checkpoint as ckpt
    from steplab.generate import generate
    from steplab.model import GPT
    from steplab.runtime import resolve_device

    path = ckpt.latest(run.path)
    loaded = ckpt.load(path, with_optimizer=False)
    model = GPT(loaded.cfg.model)
    ckpt.load_weights(model, loaded.weights, path)
    model.to(resolve_device(device)).eval()
    ids = loaded.tokenizer.encode(prompt) or [0]
    out = []
    for i in range(n):
        new = list(generate(model, torch.tensor(ids), tokens, temperature=temperature, seed=seed + i))
        text = loaded.tokenizer.decode(new)
        out.append(text if prompt == "\n" else prompt + text)
        if on_sample is not None:
            on_sample(i)
    return out


def samples_section(
    runs: Sequence[Run], *, n: int, tokens: int, seed: int, prompt: str, device: str, view: ProgressView
) -> Section:
    blocks = []
    for i, r in enumerate(runs):

        def done(j: int, i: int = i, name: str = r.name) -> None:
            view.update(i * n + j + 1, f"{name}, sample {j + 1} of {n}")

        try:
            texts = sample_texts(
                r, n=n, tokens=tokens, seed=seed, prompt=prompt, device=device, on_sample=done
            )
            blocks += [(f"{r.name}, sample {j + 1} (seed {seed + j})", t) for j, t in enumerate(texts)]
        except SteplabError as e:  # no checkpoint, a damaged one, a prompt outside the vocabulary
            blocks.append((f"{r.name}: no sample", str(e)))
            view.update((i + 1) * n, f"{r.name}: no sample")
    flags = "" if prompt == "\n" else f" --prompt {shlex.quote(prompt)}"
    text = (
        f"{tokens} tokens from each run's newest checkpoint, temperature 0.8, prompt {prompt!r}. "
        f"The same text again: steplab sample --run RUN{flags} --max-new-tokens {tokens} --seed SEED"
    )
    return Section("Samples", text=text, blocks=blocks)


def environment_section(runs: Sequence[Run]) -> Section:
    envs = [{**r.info.get("environment", {}), "started": r.info.get("started")} for r in runs]
    keys = list(dict.fromkeys(k for e in envs for k in e))
    rows = []
    for k in keys:
        values = [_fmt(e.get(k)) for e in envs]
        mark = " ≠" if len(set(values)) > 1 else ""
        rows.append([k + mark, *values])
    text = "Rows marked ≠ differ between the runs." if len(runs) > 1 else ""
    return Section("Hardware and versions", text=text, table=Table(["", *(r.name for r in runs)], rows))


# --- the entry point ------------------------------------------------------------------------


def build_report(
    runs: Sequence[str | Path | Run],
    out: str | Path,
    *,
    title: str | None = None,
    sections: Sequence[Section] = (),
    samples: int = 2,
    sample_tokens: int = 200,
    prompt: str = "\n",
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> Report:
    """Write ``out`` (HTML), its ``.md`` twin and ``<stem>_files/*.png``; return their paths.

    `runs` are run directories (or `Run`s already loaded, e.g. with custom names).
    `sections` (a compare's results table, a study's summary) come right after the overview.
    `samples` = 0 skips sampling (no checkpoint is read).
    """
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise SteplabError(f"{out}: the report path must end in .html (the Markdown twin gets .md)")
    if not runs:
        raise SteplabError("a report needs at least one run")
    if samples < 0 or sample_tokens < 1:
        raise SteplabError(
            f"--samples must be >= 0 and --sample-tokens >= 1 (got {samples}, {sample_tokens})"
        )
    given = [r for r in runs if isinstance(r, Run)]
    if given and len(given) != len(runs):
        raise SteplabError("pass either run directories or loaded runs, not both")
    rs = given or load_runs([Path(r) for r in runs if not isinstance(r, Run)])
    assets = out.with_name(out.stem + "_files")
    assets.mkdir(parents=True, exist_ok=True)
    title = title or f"steplab report: {', '.join(r.name for r in rs)}"
    meta = f"generated {time.strftime('%Y-%m-%d %H:%M:%S %z')} by steplab {__version__} from " + ", ".join(
        str(r.path) for r in rs
    )
    with working(f"report: plotting {plural(len(rs), 'run')}", enabled=progress):
        plots = plots_section(rs, assets)
    parts = [overview(rs), *sections, config_section(rs), metrics_section(rs), plots]
    if samples:
        view = ProgressView(len(rs) * samples, "samples", enabled=progress, label="samples", plain_every=0)
        try:
            parts.append(
                samples_section(
                    rs, n=samples, tokens=sample_tokens, seed=seed, prompt=prompt, device=device, view=view
                )
            )
        finally:
            view.close()
    parts.append(environment_section(rs))
    write_file(out, render_html(title, parts, meta))  # atomic: a full disk leaves the old report
    md = out.with_suffix(".md")
    write_file(md, render_markdown(title, parts, meta, out.parent))
    return Report(html=out, markdown=md, sections=parts)
