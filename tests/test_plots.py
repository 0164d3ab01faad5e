"""Plots: files exist and carry the expected series (not pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from steplab.plots import loss_curves, smooth


def test_loss_curves_from_records(tmp_path: Path) -> None:
    a = [{"step": s, "tokens": s * 10, "train_seconds": s / 10, "loss": 3.0 - s / 100} for s in range(1, 50)]
    a += [{"step": 25, "tokens": 250, "train_seconds": 2.5, "val_loss": 2.9}]
    b = [{"step": s, "tokens": s * 10, "train_seconds": s / 5, "loss": 3.0} for s in range(1, 30)]
    out = tmp_path / "curves.png"
    plotted = loss_curves({"a": a, "b": b}, out, x="tokens")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"
    assert plotted["a"]["val"] == ([250.0], [2.9])
    assert len(plotted["a"]["train"][0]) == 49 and plotted["b"]["val"] == ([], [])
    with pytest.raises(ValueError, match="x must be one of"):
        loss_curves({"a": a}, out, x="wall")


def test_smooth_is_bias_corrected() -> None:
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])
    assert smooth([1.0, 3.0], alpha=0.5)[1] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
