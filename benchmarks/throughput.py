"""Step throughput: steplab at exactly the reference's configuration vs the reference trainer.

Both run back to back in fresh processes, alternating, `--repeats` times; the ratio is the
median of the per-pair tokens/s ratios (pairs are adjacent in time, so machine noise hits
both sides alike). Training time excludes evaluation on both sides, and the first 100 steps
(compilation, warm-up) are left out of the measure on both sides.

    python benchmarks/throughput.py --steps 400 --repeats 3
    python benchmarks/throughput.py --variants   # also the levers: threads, bf16, compile

On a shared VM, tokens/s drifts by +-20% over tens of seconds, more than separate runs can
average out. `--interleaved` measures in one process instead, alternating blocks of 10 steps:
steplab's full `fit` loop (metrics, guard, schedule; evaluation off) and the reference's own
step (its `GPT` and `lr_at` imported from reference_gpt.py, and the eight lines of its
training step: random windows, set lr, forward, zero_grad, backward, clip, AdamW step). Each
steplab block is paired with the reference block next to it; the ratio is the median pair.

    python benchmarks/throughput.py --interleaved --blocks 60
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import REFERENCE, alternate, median, reference, steplab, table

# steplab flags that reproduce reference_gpt.py: 4 layers, 4 heads, width 128, context 64,
# batch 12, AdamW 1e-3 betas (0.9, 0.99) wd 0.1, 100 warmup steps, cosine to 1e-4, clip 1.0.
REFERENCE_CONFIG = ["--preset", "shakespeare_char", "--eval.every", "0", "--train.log-every", "100"]

VARIANTS = {
    "steplab (reference config)": [],
    "+ float32 (no autocast)": ["--train.dtype", "float32"],
    "+ bf16 autocast": ["--train.dtype", "bfloat16"],
    "+ torch.compile": ["--train.compile"],
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


class ReferenceSteps:
    """The reference trainer's model, optimizer and step, driven in blocks (see the docstring)."""

    def __init__(self, seed: int = 1337) -> None:
        import importlib.util

        import torch

        spec = importlib.util.spec_from_file_location("reference_gpt", REFERENCE)
        assert spec and spec.loader, REFERENCE
        ref = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(ref)
        torch.manual_seed(seed)
        text = Path(ref.DEFAULT_DATA).read_text(encoding="utf-8")
        stoi = {c: i for i, c in enumerate(sorted(set(text)))}
        data = torch.tensor([stoi[c] for c in text], dtype=torch.long)
        self.train = data[: int(0.9 * len(data))]
        self.model = ref.GPT(len(stoi), 64, 128, 4, 4)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-3,
            betas=(0.9, 0.99),
        )
        self.lr_at, self.it, self.torch = ref.lr_at, 0, torch

    def block(self, n: int) -> float:
        """Seconds for `n` reference steps (the body of reference_gpt.py's loop, timed the same way)."""
        torch, train, ctx, batch = self.torch, self.train, 64, 12
        t0 = time.perf_counter()
        for _ in range(n):
            ix = torch.randint(len(train) - ctx - 1, (batch,))
            x = torch.stack([train[i : i + ctx] for i in ix])
            y = torch.stack([train[i + 1 : i + ctx + 1] for i in ix])
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.it, decay_iters=2000)
            loss = self.model(x, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            loss.item()  # the reference reads the loss every step
            self.it += 1
        return time.perf_counter() - t0


def interleaved(args: argparse.Namespace) -> None:
    from steplab.config import set_value
    from steplab.presets import get_preset

    block = 10
    names = list(VARIANTS)[:1]
    if args.variants is not None:
        names += [n for n in list(VARIANTS)[1:] if not args.variants or any(v in n for v in args.variants)]
    rows = []
    for name in names:
        cfg = get_preset("shakespeare_char")
        flags = VARIANTS[name]
        for i, key in enumerate(flags):
            if key.startswith("--"):  # "--name value", or a bare boolean "--name"
                bare = i + 1 == len(flags) or flags[i + 1].startswith("--")
                set_value(cfg, key.removeprefix("--"), "true" if bare else flags[i + 1])
        cfg.eval.every, cfg.train.tensorboard = 0, False
        warm = 10 if cfg.train.compile else 3  # blocks left out: compilation, allocator warm-up
        cfg.train.max_steps = block * (args.blocks + warm + 1)
        ours, ref = alternate(cfg, ReferenceSteps().block, block, warm)
        ratio = median([r / o for r, o in zip(ref, ours, strict=True)])
        tps = block * 768 / median(ours)
        rows.append([name, f"{tps:,.0f}", f"{block * 768 / median(ref):,.0f}", f"{ratio:.2f}"])
        print(" | ".join(rows[-1]), file=sys.stderr)
    print(f"in one process, {args.blocks} alternating blocks of {block} steps per row\n")
    print(table(["steplab", "tokens/s", "reference tokens/s (same blocks)", "ratio (median pair)"], rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", nargs="*", help="also measure these levers (all when none named)")
    ap.add_argument("--interleaved", action="store_true", help="alternate blocks in one process")
    ap.add_argument("--blocks", type=int, default=40, help="timed blocks per row (--interleaved)")
    args = ap.parse_args()
    if args.interleaved:
        interleaved(args)
        return
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
