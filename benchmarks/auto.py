"""Does `steplab auto` beat hand-picked settings at equal wall time, on data it was never tuned on?

For each corpus, budget and seed, every method gets the same wall time T on this machine,
run back to back in fresh processes, in an order that alternates from one seed to the next:

- auto:        steplab auto --budget T
- default:     steplab train --preset default --train.max-seconds T' (the schedule fitted to T')
- default-bpe: the same with --tokenizer bpe --tokenizer.vocab-size 1024 (prose only: the BPE setting)
- seed:        steplab train --preset seed_adamw --train.max-seconds T'
- tune:        steplab tune (20 trials, a learning-rate/batch/width space) for half of T, then its
               best config retrained for the rest

T' is T minus the start-up, evaluation and tokenizing time measured on the first default run
(so the baselines' whole commands take T too, as auto's does); each baseline's total wall
time is printed next to its result. The score is validation bits per byte over the whole
validation split (comparable across tokenizers).

Corpora (built locally, nothing downloaded): the bundled Tiny Shakespeare; English prose (the
Vim user manual); Python source (the standard library of the running Python).

    python benchmarks/auto.py --budgets 5m --seeds 1337 1338 --out docs/auto/results.json
    python benchmarks/auto.py --budgets 15m --corpora shakespeare --methods auto default
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import table
from generalize import build_corpora

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from steplab.auto.budget import parse_duration  # noqa: E402

TUNE_SPACE = """
[optim.lr]
type = "log_float"
low = 3e-4
high = 3e-2

[optim.name]
type = "categorical"
choices = ["adamw", "muon"]

[train.batch_size]
type = "categorical"
choices = [16, 32, 64]

[model.n_embd]
type = "categorical"
choices = [64, 128, 192]
"""
STARTUP_ALLOWANCE = (
    12.0  # seconds a baseline's command spends outside training: start-up, data, final evaluation
)


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return wall, out.stdout


def steplab(*args: str) -> list[str]:
    return [sys.executable, "-m", "steplab", *args]


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def method_auto(corpus: Path | None, seconds: float, seed: int, work: Path, env: dict[str, str]) -> dict:
    out = work / "auto"
    data = ["--data", str(corpus)] if corpus else []
    wall, _ = run(
        steplab(
            "auto",
            *data,
            "--budget",
            f"{seconds:.0f}s",
            "--run-dir",
            str(out),
            "--seed",
            str(seed),
            "--quiet",
        ),
        env,
    )
    state = json.loads((out / "auto.json").read_text())
    picks = {d["name"]: d["title"].split(": ", 1)[-1] for d in state["decisions"]}
    return {
        "val_bpb": state["final"]["val_bpb"],
        "wall": wall,
        "note": "; ".join(f"{k}: {v}" for k, v in picks.items()),
    }


def method_train(preset: str, extra: list[str]):  # noqa: ANN201
    def go(corpus: Path | None, seconds: float, seed: int, work: Path, env: dict[str, str]) -> dict:
        out = work / preset
        data = ["--data", str(corpus)] if corpus else []
        budget = max(10.0, seconds - STARTUP_ALLOWANCE)
        cmd = steplab(
            "train",
            "--preset",
            preset,
            *data,
            *extra,
            "--train.max-steps",
            "none",
            "--train.max-seconds",
            f"{budget:.0f}",
            "--train.seed",
            str(seed),
            "--eval.every",
            "0",
            "--run-dir",
            str(out),
            "--quiet",
            "--train.tensorboard",
            "false",
        )
        wall, _ = run(cmd, env)
        return {"val_bpb": summary_of(out)["val_bpb"], "wall": wall, "note": f"train {budget:.0f} s"}

    return go


def method_tune(corpus: Path | None, seconds: float, seed: int, work: Path, env: dict[str, str]) -> dict:
    space = work / "space.toml"
    space.write_text(TUNE_SPACE)
    data = ["--data", str(corpus)] if corpus else []
    trial = max(3.0, (seconds / 2) / 20 - 2.0)  # 20 trials in half the budget, each with ~2 s of overhead
    t0 = time.perf_counter()
    run(
        steplab(
            "tune",
            "--preset",
            "default",
            *data,
            "--space",
            str(space),
            "--trials",
            "20",
            "--train.max-seconds",
            f"{trial:.1f}",
            "--seed",
            str(seed),
            "--dir",
            str(work / "study"),
            "--quiet",
            "--train.tensorboard",
            "false",
        ),
        env,
    )
    left = max(10.0, seconds - (time.perf_counter() - t0) - STARTUP_ALLOWANCE)
    out = work / "tuned"
    wall, _ = run(
        steplab(
            "train",
            "--config",
            str(work / "study" / "best.toml"),
            *data,
            "--train.max-steps",
            "none",
            "--train.max-seconds",
            f"{left:.0f}",
            "--train.seed",
            str(seed),
            "--eval.every",
            "0",
            "--run-dir",
            str(out),
            "--quiet",
            "--train.tensorboard",
            "false",
        ),
        env,
    )
    return {
        "val_bpb": summary_of(out)["val_bpb"],
        "wall": time.perf_counter() - t0,
        "note": f"tune {seconds / 2:.0f} s + train {left:.0f} s",
    }


METHODS = {
    "auto": method_auto,
    "default": method_train("default", []),
    "default-bpe": method_train("default", ["--tokenizer", "bpe", "--tokenizer.vocab-size", "1024"]),
    "seed": method_train("seed_adamw", []),
    "tune": method_tune,
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", nargs="+", default=["5m"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1337, 1338])
    ap.add_argument("--corpora", nargs="+", default=["shakespeare", "prose", "code"])
    ap.add_argument(
        "--methods",
        nargs="+",
        default=["auto", "default", "default-bpe", "seed", "tune"],
        choices=list(METHODS),
    )
    ap.add_argument("--chars", type=int, default=1_100_000)
    ap.add_argument("--out", default=None, help="append the results (JSON lines) here")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    rows, results = [], []
    with tempfile.TemporaryDirectory() as tmp:
        env["STEPLAB_CACHE"] = str(Path(tmp) / "cache")
        built = build_corpora(Path(tmp), args.chars)
        corpora = {"shakespeare": None, **built}
        for budget in args.budgets:
            seconds = parse_duration(budget)
            for corpus in args.corpora:
                methods = [m for m in args.methods if m != "default-bpe" or corpus == "prose"]
                for k, seed in enumerate(args.seeds):
                    order = methods if k % 2 == 0 else list(reversed(methods))
                    for m in order:
                        with tempfile.TemporaryDirectory(dir=tmp) as work:
                            r = METHODS[m](corpora[corpus], seconds, seed, Path(work), env)
                        rec = {"budget": budget, "corpus": corpus, "seed": seed, "method": m, **r}
                        results.append(rec)
                        print(json.dumps(rec), file=sys.stderr, flush=True)
                        if args.out:
                            with open(args.out, "a") as fh:
                                fh.write(json.dumps(rec) + "\n")
                        rows.append(
                            [budget, corpus, seed, m, f"{r['val_bpb']:.4f}", f"{r['wall']:.0f}", r["note"]]
                        )
    print(table(["budget", "corpus", "seed", "method", "val bits/byte", "wall s", "note"], rows))


if __name__ == "__main__":
    main()
