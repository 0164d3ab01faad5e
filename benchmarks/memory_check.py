"""Peak memory of one CPU training step vs the activations autograd saves (batch-find's estimate).

    PYTHONPATH=src python benchmarks/memory_check.py 32
    PYTHONPATH=src python benchmarks/memory_check.py 128

Prints the rise of the process's peak RSS over one step of the default model at that batch
size, the saved activations `steplab.tools.batch_find` measures, and their ratio (the
`BACKWARD_PEAK` allowance). One batch size per process: the peak RSS never goes down.
"""

from __future__ import annotations

import resource
import sys

import torch

from steplab.loop.session import build
from steplab.loop.step import train_step
from steplab.presets import get_preset
from steplab.tools.batch_find import saved_activation_bytes


def main() -> None:
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    torch.set_num_threads(1)
    cfg = get_preset("default")
    cfg.train.batch_size = batch
    s = build(cfg)
    x, y = s.sampler.batch_at(0)
    train_step(s.model, s.optimizer, [(x[:1], y[:1])], grad_clip=1.0)  # allocates the optimizer state
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    train_step(s.model, s.optimizer, [(x, y)], grad_clip=1.0)
    rise = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024
    per = saved_activation_bytes(s.model, x[:2], y[:2]) - saved_activation_bytes(s.model, x[:1], y[:1])
    saved = batch * per
    print(
        f"batch {batch}: peak RSS rise {rise / 2**20:.0f} MiB, saved activations {saved / 2**20:.0f} MiB, ratio {rise / saved:.2f}"
    )


if __name__ == "__main__":
    main()
