"""Instrumentation overhead: the full training loop against a bare step, in one process.

The full loop is `steplab.loop.fit.fit` with everything a user gets by default: metrics.jsonl and
TensorBoard events in a run directory, the progress display, the divergence guard, the
schedule, seeded batches, logging every `--log-every` steps (periodic evaluation off). The
bare step is the textbook step on a second, identical model: draw a batch, set the learning
rate, forward, backward, clip, optimizer step; nothing else.

The two alternate in blocks: each time the loop logs (every `--log-every` steps), a callback
runs the same number of bare steps and times them, so machine noise falls on both alike.
A full-loop block is the wall time between two logs minus the bare block run inside it.
The overhead is the median, over adjacent pairs, of full-loop block / bare block, minus one
(pairs share the machine's state of the moment; single blocks swing by +-20% on a shared VM).

    python benchmarks/overhead.py                      # reference config (shakespeare_char)
    python benchmarks/overhead.py --preset default --blocks 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from common import alternate

from steplab.loop.session import build
from steplab.presets import get_preset


class BareSteps:
    """Bare steps on a model of its own, built from the same config (same model, optimizer,
    batches and autocast as the loop's)."""

    def __init__(self, cfg) -> None:  # noqa: ANN001
        self.s = build(cfg)
        self.i = 0

    def block(self, n: int) -> float:
        """Seconds for `n` bare steps."""
        s, t0 = self.s, time.perf_counter()
        model, opt, clip = s.step_model, s.optimizer, s.cfg.optim.grad_clip
        for _ in range(n):
            x, y = s.sampler.batch_at(self.i)
            self.i += 1
            for g in opt.param_groups:
                g["lr"] = s.peak_lr * s.schedule(self.i, self.i / 1e4)
            with s.amp():
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
            opt.step()
            opt.zero_grad(set_to_none=True)
        loss.item()  # the same one host sync per block as the loop's log step
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="shakespeare_char")
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--blocks", type=int, default=30, help="timed blocks of each kind")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--warmup-blocks", type=int, default=2)
    ap.add_argument("--verbose", action="store_true", help="print every block")
    args = ap.parse_args()
    cfg = get_preset(args.preset)
    cfg.train.threads = args.threads
    cfg.train.max_steps = args.log_every * (args.blocks + args.warmup_blocks + 1)
    cfg.eval.every = 0  # periodic evaluation off; the final evaluation comes after the last block
    cfg.checkpoint.every = 0
    full, plain = alternate(cfg, BareSteps(cfg).block, args.log_every, args.warmup_blocks, progress=True)
    ratio = statistics.median(f / b for f, b in zip(full, plain, strict=True))
    if args.verbose:
        print("full:", [round(v, 3) for v in full], "\nbare:", [round(v, 3) for v in plain], file=sys.stderr)
    ms = lambda v: f"{1e3 * v / args.log_every:.2f}"  # noqa: E731
    print(
        f"\npreset {args.preset}, {len(full)} blocks of {args.log_every} steps each, alternating, "
        f"torch threads {torch.get_num_threads()}\n",
        file=sys.stderr,
    )
    print("| step | ms/step (median block) | ms/step (min block) |")
    print("|---|---|---|")
    print(f"| bare step | {ms(statistics.median(plain))} | {ms(min(plain))} |")
    print(
        f"| full loop (metrics, TensorBoard, progress, guard) | {ms(statistics.median(full))} | {ms(min(full))} |"
    )
    print(f"\noverhead: {100 * (ratio - 1):+.1f}% (median of {len(full)} paired block ratios)")


if __name__ == "__main__":
    main()
