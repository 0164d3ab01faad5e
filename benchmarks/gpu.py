"""GPU throughput and MFU at GPT-2 small size (124M), bf16, eager vs torch.compile.

GPT-2 small's shape (12 layers, 12 heads, width 768, context 1024, vocabulary 50304, tied
head) trained by `steplab train` on the bundled corpus (the char tokenizer: nothing to
train or download; the embedding keeps GPT-2's 50304 rows, so the FLOPs are GPT-2's).
tokens/s and MFU come from the run's own metrics after `--warmup` steps (compilation and
allocator warm-up left out); MFU is model FLOPs (6N + 12·L·C·T per token) over the
device's dense bf16 peak (989 TFLOP/s for H100/H200; `PEAK_FLOPS` in runtime.py).

    python benchmarks/gpu.py                       # on a machine with a CUDA GPU
    python benchmarks/gpu.py --size tiny --device cpu --steps 30 --warmup 10   # dry run
"""

from __future__ import annotations

import argparse

from common import median, steplab, table

SIZES = {
    "gpt2_small": ["--model.n-layer", "12", "--model.n-head", "12", "--model.n-embd", "768",
                   "--model.block-size", "1024", "--model.vocab-size", "50304"],
    "tiny": ["--model.n-layer", "2", "--model.n-head", "2", "--model.n-embd", "64",
             "--model.block-size", "64", "--model.vocab-size", "512"],
}  # fmt: skip


def measure(size: str, device: str, batch: int, steps: int, warmup: int, extra: list[str]) -> dict:
    _, records = steplab(
        "--preset", "gpt2_small", "--tokenizer", "char", *SIZES[size],
        "--train.device", device, "--train.dtype", "bfloat16", "--train.batch-size", str(batch),
        "--train.max-steps", str(steps), "--train.log-every", "10",
        "--eval.every", "0", "--eval.max-windows", "16", "--checkpoint.keep-best", "false",
        *extra,
    )  # fmt: skip
    logs = [r for r in records if "loss" in r and r["step"] > warmup]
    if not logs:
        raise SystemExit(f"no logged steps after --warmup {warmup}; raise --steps")
    return {
        "tokens_per_s": median([r["tokens_per_second"] for r in logs]),
        "mfu": median([r["mfu"] for r in logs]) if "mfu" in logs[0] else None,
        "peak_mb": max(r.get("peak_mem_mb", r.get("rss_mb", 0.0)) for r in logs),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", choices=list(SIZES), default="gpt2_small")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=40, help="steps left out (compilation, warm-up)")
    args = ap.parse_args()
    rows = []
    for name, extra in [("eager, bf16", []), ("torch.compile, bf16", ["--train.compile"])]:
        r = measure(args.size, args.device, args.batch, args.steps, args.warmup, extra)
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no known peak)"
        rows.append([name, f"{r['tokens_per_s']:,.0f}", mfu, f"{r['peak_mb']:,.0f}"])
    print(
        f"{args.size}, batch {args.batch}, device {args.device}, median of logged steps after {args.warmup}\n"
    )
    print(table(["step", "tokens/s", "MFU", "peak memory MiB"], rows))


if __name__ == "__main__":
    main()
