"""Acceptance experiments for lr-find, tune and muP (docs/tuning.md).

Every budget is in optimizer steps, so the figures do not depend on how busy the machine is.
``--scale small`` is the reduced setting measured on a shared 2-core CPU; ``--scale full``
is the issue's setting (the default preset as it is), for a quiet machine or a GPU.

    python benchmarks/tuning.py lr  --scale small --out docs/tuning   # lr-find vs a 7-point grid
    python benchmarks/tuning.py mup --scale small --out docs/tuning   # best lr vs width, SP and muP
    python benchmarks/tuning.py tune --scale small --out docs/tuning  # 20 trials vs the preset

Each writes ``<name>-<scale>.json`` (every run's final validation loss and the command-line
equivalent of its config) and a plot next to it.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

from steplab.config import RunConfig, dump_toml, load_toml
from steplab.loop.fit import train
from steplab.tools.lr_find import lr_find, write_result

GRID = [3e-3 * 2.0**k for k in range(-3, 4)]  # 7 points, factor 2, centred on the preset's 3e-3


def base_config(scale: str) -> tuple[RunConfig, list[str]]:
    """The default preset, reduced for `small`; returns the config and the flags that say so."""
    flags = ["--preset", "default", "--train.tensorboard", "false"]
    if scale == "small":  # one thread: the measuring machine was shared
        flags += [
            "--train.threads",
            "1",
            "--model.n-embd",
            "64",
            "--model.block-size",
            "64",
            "--train.batch-size",
            "16",
        ]
        flags += ["--train.max-steps", "300", "--schedule.warmup-steps", "25"]
        flags += ["--eval.every", "100", "--eval.max-windows", "256"]
    else:
        flags += ["--eval.max-windows", "512"]
    from steplab.cli.main import train_config

    return train_config(flags), flags


def final_val(cfg: RunConfig, run_dir: Path, lr: float) -> float:
    c = copy.deepcopy(cfg)
    c.optim.lr = lr
    c.checkpoint.keep_best = False
    summary = run_dir / "summary.json"
    if summary.exists() and _same(load_toml(run_dir / "config.toml"), c):  # measured before
        done = json.loads(summary.read_text())
        if done.get("status") == "finished":
            print(f"  lr {lr:.3g}: val_loss {done['val_loss']:.4f} (from {run_dir})", flush=True)
            return float(done["val_loss"])
    t0 = time.time()
    res = train(c, run_dir, overwrite=True, progress=False)
    val = res.final.get("val_loss", float("nan")) if res.status == "finished" else float("nan")
    print(f"  lr {lr:.3g}: val_loss {val:.4f} ({res.status}, {time.time() - t0:.0f} s wall)", flush=True)
    return val


def _same(saved: RunConfig, cfg: RunConfig) -> bool:
    saved.model.vocab_size = cfg.model.vocab_size  # set from the tokenizer when the run was built
    return dump_toml(saved) == dump_toml(cfg)


# --- (1) lr-find vs a learning-rate grid -------------------------------------------------------


def exp_lr_grid(scale: str, out: Path, runs: Path) -> dict[str, Any]:
    cfg, flags = base_config(scale)
    print(f"lr-find on {' '.join(flags)}", flush=True)
    found = lr_find(cfg, steps=100)
    write_result(found, out / f"lr_find-{scale}")
    sug = found.suggestion
    print(f"  suggestions: min10 {sug.min10:.3g}, steepest {sug.steepest:.3g} (minimum {sug.minimum:.3g})")
    grid = {lr: final_val(cfg, runs / f"grid-{lr:.3g}", lr) for lr in GRID}
    picks = {rule: getattr(sug, rule) for rule in ("min10", "steepest")}
    picked = {rule: final_val(cfg, runs / f"lrfind-{rule}", lr) for rule, lr in picks.items()}
    best_lr = min(grid, key=lambda k: grid[k])
    result = {
        "scale": scale,
        "flags": flags,
        "grid": {f"{k:.6g}": v for k, v in grid.items()},
        "best_grid_lr": best_lr,
        "best_grid_val": grid[best_lr],
        "suggestions": picks,
        "suggestion_val": picked,
        "gap_percent": {r: 100 * (v / grid[best_lr] - 1) for r, v in picked.items()},
        "lr_find_stopped": found.stopped,
    }
    _plot_lr(result, out / f"lr_grid-{scale}.png")
    return result


def _plot_lr(r: dict[str, Any], path: Path) -> None:
    from steplab.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [float(k) for k in r["grid"]]
    ax.plot(xs, list(r["grid"].values()), marker="o", label="7-point grid")
    for (rule, lr), color in zip(r["suggestions"].items(), ("C2", "C1"), strict=True):
        v = r["suggestion_val"][rule]
        ax.scatter([lr], [v], color=color, zorder=5, s=60, label=f"lr-find {rule} {lr:.2g}: {v:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("final validation loss")
    ax.set_title(f"AdamW, default preset ({r['scale']}): lr-find suggestion vs 7-point grid, same steps")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- (4) muP: best learning rate across widths ------------------------------------------------


def exp_mup(scale: str, out: Path, runs: Path) -> dict[str, Any]:
    cfg, flags = base_config(scale)
    widths = [64, 128, 256]
    grid = [3.75e-4 * 2.0**k for k in range(8)]  # 3.75e-4 .. 4.8e-2
    if scale == "small":
        cfg.model.n_layer, cfg.model.block_size, cfg.train.batch_size = 2, 64, 8
        cfg.train.max_steps, cfg.eval.every, cfg.eval.max_windows = 200, 0, 128
        cfg.schedule.warmup_steps = 20
        flags = [*flags, "--model.n-layer", "2", "--train.batch-size", "8", "--train.max-steps", "200"]
        flags += ["--eval.every", "0", "--eval.max-windows", "128", "--schedule.warmup-steps", "20"]
    cfg.model.mup_base_width = 128
    flags += ["--model.mup-base-width", "128"]
    losses: dict[str, dict[int, dict[float, float]]] = {"sp": {}, "mup": {}}
    suggested: dict[int, dict[str, float]] = {}  # lr-find on the SP models: more evidence for its rule
    for p in ("sp", "mup"):
        for w in widths:
            print(f"{p} width {w}", flush=True)
            c = _at(cfg, w, p)
            if p == "sp":
                sug = lr_find(c, steps=100).suggestion
                suggested[w] = {"min10": sug.min10, "steepest": sug.steepest, "minimum": sug.minimum}
                print(f"  lr-find: {suggested[w]}", flush=True)
            if p == "mup" and w == cfg.model.mup_base_width:
                losses[p][w] = dict(losses["sp"][w])  # muP at its base width is SP (tests/test_mup.py)
                print("  (the SP runs: muP at the base width is the same model)")
                continue
            losses[p][w] = {lr: final_val(c, runs / f"{p}-w{w}-lr{lr:.3g}", lr) for lr in grid}
    best = {p: {w: min(v, key=lambda k: v[k]) for w, v in per.items()} for p, per in losses.items()}
    spread = {p: max(b.values()) / min(b.values()) for p, b in best.items()}
    result = {
        "flags": flags,
        "grid": grid,
        "widths": widths,
        "val_loss": {
            p: {str(w): {f"{lr:.6g}": v for lr, v in d.items()} for w, d in per.items()}
            for p, per in losses.items()
        },
        "best_lr": {p: {str(w): lr for w, lr in b.items()} for p, b in best.items()},
        "best_lr_spread": spread,  # max/min best lr over the widths: 2 = one grid point
        "lr_find_sp": {str(w): v for w, v in suggested.items()},
    }
    _plot_mup(result, out / f"mup_transfer-{scale}.png")
    return result


def _at(cfg: RunConfig, width: int, parametrization: str) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.model.n_embd, c.model.parametrization = width, parametrization  # type: ignore[assignment]
    return c


def _plot_mup(r: dict[str, Any], path: Path) -> None:
    from steplab.figures import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, p in zip(axes, ("sp", "mup"), strict=True):
        for i, w in enumerate(r["widths"]):
            d = r["val_loss"][p][str(w)]
            xs, ys = [float(k) for k in d], list(d.values())
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"width {w}")
            b = r["best_lr"][p][str(w)]
            ax.scatter([b], [d[f"{b:.6g}"]], color=f"C{i}", s=120, marker="*", zorder=5)
        ax.set_xscale("log")
        ax.set_title(f"{p.upper()}: best lr spread x{r['best_lr_spread'][p]:g} over widths")
        ax.set_xlabel("peak learning rate (base)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("final validation loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- (2) tune vs the preset ---------------------------------------------------------------------

SPACE = """\
[optim.lr]
type = "log_float"
low = 3e-4
high = 3e-2

[optim.weight_decay]
type = "float"
low = 0.0
high = 0.2

[optim.beta2]
type = "categorical"
choices = [0.95, 0.99, 0.999]

[schedule.warmup_steps]
type = "int"
low = 0
high = 100
step = 10

[schedule.decay_fraction]
type = "float"
low = 0.1
high = 0.6
"""


def exp_tune(scale: str, out: Path, runs: Path) -> dict[str, Any]:
    from steplab.cli.main import main

    cfg, flags = base_config(scale)
    space = out / "tune_space.toml"
    space.write_text(SPACE)
    study = runs / f"tune-{scale}"
    argv = ["tune", *flags, "--space", str(space), "--trials", "20", "--dir", str(study), "--quiet"]
    print("steplab " + " ".join(argv), flush=True)
    rc = main(argv)
    trials = json.loads((study / "trials.json").read_text())
    done = [t for t in trials if t["state"] == "COMPLETE"]
    best = min(done, key=lambda t: t["value"])
    lr = float(cfg.optim.lr)  # type: ignore[arg-type]
    preset_val = final_val(cfg, runs / f"grid-{lr:.3g}", lr)  # the lr experiment's run, when there is one
    # Is the gain larger than the seed-to-seed spread? Both configs again with two more seeds.
    from steplab.tools.tune import apply

    best_cfg = apply(cfg, best["params"])
    seeds: dict[str, list[float]] = {"preset": [preset_val], "best": [best["value"]]}
    for seed in (1, 2):
        for name, c in (("preset", cfg), ("best", best_cfg)):
            c = copy.deepcopy(c)
            c.train.seed = seed
            seeds[name].append(final_val(c, runs / f"tune-{name}-seed{seed}", float(c.optim.lr)))  # type: ignore[arg-type]
    result = {
        "seeds": seeds,
        "flags": flags,
        "command": "steplab " + " ".join(argv),
        "rc": rc,
        "trials": {s: sum(t["state"] == s for t in trials) for s in ("COMPLETE", "PRUNED", "FAIL")},
        "best_trial": best["number"],
        "best_val": best["value"],
        "best_params": best["params"],
        "preset_val": preset_val,
        "improvement_percent": 100 * (1 - best["value"] / preset_val),
    }
    for name in ("history.png", "importances.png"):
        if (study / name).exists():
            (out / f"tune_{name.replace('.png', '')}-{scale}.png").write_bytes((study / name).read_bytes())
    return result


EXPERIMENTS = {"lr": exp_lr_grid, "mup": exp_mup, "tune": exp_tune}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=list(EXPERIMENTS))
    ap.add_argument("--scale", choices=["small", "full"], default="small")
    ap.add_argument("--out", default="docs/tuning", help="where the JSON and the plots go")
    ap.add_argument("--runs", default="runs/bench-tuning", help="where the runs go")
    args = ap.parse_args(argv)
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    result = EXPERIMENTS[args.experiment](args.scale, out, runs)
    result["wall_seconds"] = round(time.time() - t0)
    path = out / f"{args.experiment}-{args.scale}.json"
    path.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("val_loss", "grid")}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
