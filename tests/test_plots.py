"""Plots: files exist and carry the expected series (not pixels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from steplab.figures import PALETTE, colors_for, sane_limits, smooth, smoothing_for
from steplab.reports.labels import difference_labels
from steplab.reports.plots import PANELS, dashboard, diverged_in, loss_curves, loss_limits, series


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


def test_smoothing_follows_the_number_of_points() -> None:
    assert smoothing_for(0.9, 10) == 0.0 and smoothing_for(0.9, 20) == 0.0  # few points: raw
    assert smoothing_for(0.9, 100) == pytest.approx(0.8) and smoothing_for(0.9, 1000) == 0.9
    assert smoothing_for(0.0, 1000) == 0.0  # --smoothing 0 stays raw
    # A short run falling fast: the drawn curve ends where the loss ends, not far above it.
    falling = [4.0 - 0.1 * i for i in range(15)]
    recs = [{"step": i, "loss": v} for i, v in enumerate(falling)]
    assert smooth(falling, smoothing_for(0.9, len(falling)))[-1] == falling[-1]
    assert smooth(falling, 0.9)[-1] > falling[-1] + 0.5  # what a fixed EMA(0.9) drew before
    assert series(recs, "step", "loss")[1] == falling


def test_a_run_keeps_its_colour_in_every_figure(tmp_path: Path) -> None:
    runs = {"adamw": fake_run(40, speed=10, lr=1e-3), "muon": fake_run(40, speed=10, lr=1e-2)}
    more = {"sgd": fake_run(40, speed=5, lr=0.1), **runs, "rmsprop": fake_run(40, speed=5, lr=1e-4)}
    first, second = colors_for(runs), colors_for(more)
    assert first["muon"] == second["muon"] and first["adamw"] == second["adamw"]
    assert len(set(second.values())) == 4 and colors_for(reversed(list(more))) == second
    crowded = colors_for(f"run {i}" for i in range(len(PALETTE)))  # collisions move to free colours
    assert len(set(crowded.values())) == len(PALETTE) and "#7f7f7f" not in PALETTE  # grey: line styles
    loss_curves(runs, tmp_path / "a.svg")
    dashboard(more, tmp_path / "b.svg")
    for name in ("a.svg", "b.svg"):
        svg = (tmp_path / name).read_text()
        assert f"stroke: {first['muon']}" in svg and f"stroke: {first['adamw']}" in svg


def test_diverged_runs_are_marked_and_the_axis_kept_sane(tmp_path: Path) -> None:
    good = [{"step": s, "loss": 4.2 - s / 50} for s in range(0, 100, 10)]
    blown = [{"step": s, "loss": 4.2 if s < 40 else 10.0**s} for s in range(0, 70, 10)]
    nan = [*good[:3], {"step": 30, "loss": "nan"}]
    assert diverged_in(blown) and diverged_in(nan) and not diverged_in(good)
    assert diverged_in([{"step": 5, "event": "guard", "action": "give_up"}])
    low, high = sane_limits([series(good, "step", "loss")[1], series(blown, "step", "loss")[1]])
    assert low < min(r["loss"] for r in good) and 4.2 < high < 5.0  # the blow-up leaves the top
    out = tmp_path / "d.svg"
    legends = {"good": "AdamW lr=3e-3", "blown": "Adagrad lr=3e-2", "ok": "SGD lr=0.1"}
    plotted = loss_curves({"good": good, "blown": blown, "ok": good}, out, legends=legends, diverged={"ok"})
    at_once = {"good": plotted["good"], "blown": {"train": ([10.0, 20.0], [5e4, 4e4])}}
    limits = loss_limits(at_once, {"blown"})  # blown from its first logged point: it sets nothing
    assert limits is not None and limits[1] < 4.5
    svg = out.read_text()
    assert "AdamW lr=3e-3" in svg and "Adagrad lr=3e-2 (diverged)" in svg and "SGD lr=0.1 (diverged)" in svg
    assert "AdamW lr=3e-3 (diverged)" not in svg
    labels = difference_labels(
        {"a": {"optim.lr": 1e-3, "train.seed": 1}, "b": {"optim.lr": 3e-3, "train.seed": 1}}
    )
    assert labels == {"a": "a: lr=1e-3", "b": "b: lr=3e-3"}
    assert difference_labels({"a": {"optim.lr": 1e-3}}) == {"a": "a"}
    named = difference_labels({"lr1e-3": {"optim.lr": 1e-3}, "fast": {"optim.lr": 3e-3}})
    assert named == {"lr1e-3": "lr1e-3", "fast": "fast: lr=3e-3"}  # a name that says it stays as is
