"""Plot every registered schedule into docs/schedules.png (run: python benchmarks/plot_schedules.py).

A 1000-step run with 100 warm-up steps and min_lr_ratio 0.1 (0 for linear decay to zero);
WSD with a 20% cool-down, linear and 1-sqrt. The curves are `steplab.schedules` themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from steplab.schedules import SCHEDULES, Shape

STEPS = 1000
CURVES = {
    "constant": ("constant", Shape(warmup_steps=100, min_ratio=0.1)),
    "cosine (warm-up + cosine to 0.1)": ("cosine", Shape(warmup_steps=100, min_ratio=0.1)),
    "wsd, linear cool-down (20%)": ("wsd", Shape(warmup_steps=100, min_ratio=0.0, decay_fraction=0.2)),
    "wsd, 1-sqrt cool-down (20%)": (
        "wsd",
        Shape(warmup_steps=100, min_ratio=0.0, decay_fraction=0.2, cooldown="1-sqrt"),
    ),
    "linear decay to zero": ("linear", Shape(warmup_steps=100, min_ratio=0.0)),
    "inverse square root": ("inv_sqrt", Shape(warmup_steps=100, min_ratio=0.0)),
}


def main(out: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, (name, shape) in CURVES.items():
        fn = SCHEDULES[name]
        ax.plot(range(STEPS), [fn(s, s / STEPS, shape) for s in range(STEPS)], label=label, lw=1.6)
    ax.set_xlabel("step (of a 1000-step run, 100 warm-up steps)")
    ax.set_ylabel("learning rate / peak")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1])
        if len(sys.argv) > 1
        else Path(__file__).resolve().parents[1] / "docs" / "schedules.png"
    )
