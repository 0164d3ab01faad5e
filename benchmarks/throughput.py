"""Step throughput: steplab at exactly the reference's configuration vs the reference trainer.

Both run back to back in fresh processes, alternating, `--repeats` times; the ratio is the
median of the per-pair tokens/s ratios (pairs are adjacent in time, so machine noise hits
both sides alike). Training time excludes evaluation on both sides, and the first 100 steps
(compilation, warm-up) are left out of the measure on both sides.

    python benchmarks/throughput.py --steps 400 --repeats 3
    python benchmarks/throughput.py --variants   # also the levers: threads, bf16 (AMX), compile
"""

from __future__ import annotations

import argparse

from common import median, reference, steplab, table

# steplab flags that reproduce reference_gpt.py: 4 layers, 4 heads, width 128, context 64,
# batch 12, AdamW 1e-3 betas (0.9, 0.99) wd 0.1, 100 warmup steps, cosine to 1e-4, clip 1.0.
REFERENCE_CONFIG = ["--preset", "shakespeare_char", "--eval.every", "0", "--train.log-every", "100"]

VARIANTS = {
    "steplab (reference config)": [],
    "+ float32 (no autocast)": ["--train.dtype", "float32"],
    "+ bf16 autocast (AMX)": ["--train.dtype", "bfloat16"],
    "+ bf16 + torch.compile": ["--train.dtype", "bfloat16", "--train.compile"],
    "+ sdpa attention": ["--model.attention", "sdpa"],
    "+ guard off": ["--guard.policy", "off"],
    "+ 1 thread": ["--train.threads", "1"],
}


WARMUP = 100  # steps left out of the measure on both sides (compilation, allocator warm-up)


def steplab_tps(steps: int, extra: list[str]) -> float:
    _, records = steplab(*REFERENCE_CONFIG, "--train.max-steps", str(steps), *extra)
    logs = [r for r in records if "loss" in r]
    first = next(r for r in logs if r["step"] == WARMUP)
    last = logs[-1]
    return (last["tokens"] - first["tokens"]) / (last["train_seconds"] - first["train_seconds"])


def reference_tps(steps: int) -> float:
    lines = reference("--max-iters", str(steps), "--eval-every", str(WARMUP))
    first = next(r for r in lines if r.get("iter") == WARMUP)
    last = [r for r in lines if "iter" in r][-1]
    return (last["tokens"] - first["tokens"]) / (last["seconds"] - first["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="*", help="also measure these levers (all when none named)")
    args = ap.parse_args()
    names = list(VARIANTS)[:1]
    if args.variants is not None:
        names += [n for n in list(VARIANTS)[1:] if not args.variants or any(v in n for v in args.variants)]
    ref, ours = [], {n: [] for n in names}
    for _ in range(args.repeats):
        ref.append(reference_tps(args.steps))
        for n in names:
            ours[n].append(steplab_tps(args.steps, VARIANTS[n]))
    rows = [["reference_gpt.py", f"{median(ref):,.0f}", "1.00"]]
    for n in names:
        ratios = [o / r for o, r in zip(ours[n], ref, strict=True)]
        rows.append([n, f"{median(ours[n]):,.0f}", f"{median(ratios):.2f}"])
    print(f"steps per run: {args.steps}, repeats: {args.repeats} (median)\n")
    print(table(["trainer", "tokens/s", "ratio to reference"], rows))


if __name__ == "__main__":
    main()
