"""How often the noise-scale error bar covers the truth, on simulated gradients.

    PYTHONPATH=src:tests python benchmarks/noise_scale_coverage.py

Uses the simulation of tests/test_batch_find.py (|G|² = 1, tr(Σ) = 50, micro-batches of 4,
4 per round): the estimate from 400 rounds, and the coverage of the 16th-84th percentile
bootstrap band over 60 repetitions of 20 rounds (nominally 68 %).
"""

from __future__ import annotations

import numpy as np

from steplab.loop.noise_scale import b_simple
from test_batch_find import simulated_rounds


def main() -> None:
    print(
        f"400 rounds: B_simple {b_simple(*simulated_rounds(np.random.default_rng(0), 400)).b_simple:.1f} (truth 50)"
    )
    rng = np.random.default_rng(1)
    hits = 0
    for rep in range(60):
        ns = b_simple(*simulated_rounds(rng, 20), boot=300, seed=rep)
        hits += ns.low <= 50.0 <= ns.high
    print(f"20 rounds: the band covered the truth in {hits} of 60 repetitions ({100 * hits / 60:.0f} %)")


if __name__ == "__main__":
    main()
