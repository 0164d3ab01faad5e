"""Plots: files exist and carry the expected series (not pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from steplab.figures import smooth
from steplab.reports.plots import PANELS, dashboard, loss_curves


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


def fake_run(n: int, *, speed: float, lr: float, mem_key: str = "rss_mb") -> list[dict]:
    recs: list[dict] = []
    for s in range(10, n + 1, 10):
        recs.append(
            {
                "step": s,
                "tokens": s * 256,
                "train_seconds": s / speed,
                "elapsed_seconds": s / speed + 0.1,
                "loss": 4.0 - s / 100,
                "lr": lr,
                "grad_norm": 1.0 / s,
                "tokens_per_second": 256 * speed,
                mem_key: 400.0 + s,
            }
        )
        if s % 20 == 0:
            recs.append(
                {
                    "step": s,
                    "tokens": s * 256,
                    "elapsed_seconds": s / speed + 0.2,
                    "val_loss": 4.1 - s / 100,
                    "val_bpb": 5.0,
                }
            )
    return recs


def test_dashboard_has_every_panel_and_series(tmp_path: Path) -> None:
    runs = {"a": fake_run(60, speed=10, lr=1e-3), "b": fake_run(40, speed=20, lr=3e-3, mem_key="peak_mem_mb")}
    out = tmp_path / "dash.svg"
    plotted = dashboard(runs, out, title="two runs")
    svg = out.read_text()
    assert (
        svg.lstrip().startswith(("<?xml", "<svg")) and "loss vs wall-clock time" in svg and "two runs" in svg
    )
    assert set(plotted) == set(PANELS)
    a, b = plotted["loss_vs_step"]["a"], plotted["loss_vs_step"]["b"]
    assert a["train"][0] == [10, 20, 30, 40, 50, 60] and a["val"][0] == [20, 40, 60]
    assert a["val"][1] == pytest.approx([3.9, 3.7, 3.5])
    assert b["val"][0] == [20, 40]
    assert plotted["loss_vs_tokens"]["a"]["train"][0][0] == 2560
    assert plotted["loss_vs_time"]["b"]["val"][0] == [1.2, 2.2]  # wall clock: elapsed_seconds
    assert plotted["lr"]["b"]["lr"][1] == [3e-3] * 4
    assert plotted["grad_norm"]["a"]["grad_norm"][1][0] == pytest.approx(0.1)
    assert plotted["tokens_per_second"]["b"]["tokens_per_second"][1][0] == 5120
    assert plotted["val_bpb"]["a"]["val_bpb"] == ([5120, 10240, 15360], [5.0] * 3)
    assert "rss_mb" in plotted["memory"]["a"] and "peak_mem_mb" in plotted["memory"]["b"]


def test_plot_cli_png_svg_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from steplab.cli.main import main

    for name, speed in (("a", 10), ("b", 5)):
        (tmp_path / name).mkdir()
        lines = [json.dumps(r) for r in fake_run(30, speed=speed, lr=1e-3)]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["plot", str(tmp_path / "a"), "--quiet"]) == 0
    assert (tmp_path / "a" / "plots.png").read_bytes()[:4] == b"\x89PNG"
    out = tmp_path / "loss.svg"
    assert (
        main(
            [
                "plot",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--loss-only",
                "--x",
                "elapsed_seconds",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "wall-clock time (s)" in out.read_text() and capsys.readouterr().out.startswith("wrote")
    assert main(["plot", str(tmp_path / "a"), "--out", str(tmp_path / "x.gif")]) == 2
    assert "use one of .png, .svg, .pdf" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "a"), "--smoothing", "1"]) == 2
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_long_runs_are_plotted_in_minutes(tmp_path: Path) -> None:
    recs = [{"step": s, "elapsed_seconds": 60.0 * s, "loss": 1.0} for s in range(1, 30)]
    out = tmp_path / "m.svg"
    plotted = loss_curves({"a": recs}, out, x="elapsed_seconds")
    assert plotted["a"]["train"][0][-1] == 29 * 60.0  # series keep seconds; only the axis is scaled
    assert "wall-clock time (min)" in out.read_text()
