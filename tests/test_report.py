"""Reports: one self-contained HTML file with both runs, the config difference, embedded plots."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from steplab.cli.main import main
from steplab.config import RunConfig
from steplab.errors import SteplabError
from steplab.loop.fit import train
from steplab.presets import tiny
from steplab.reports.report import Section, Table, build_report, sample_texts
from steplab.reports.runs import load_run


def two_runs(root: Path, cfg: RunConfig) -> list[Path]:
    cfg.train.max_steps, cfg.eval.every = 20, 10
    train(cfg, root / "base")
    cfg.optim.lr = 3e-3
    train(cfg, root / "fast-lr")
    return [root / "base", root / "fast-lr"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One report of two tiny runs, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEPLAB_CACHE", str(root / "cache"))
        torch.set_num_threads(1)  # as conftest does for each test (this fixture runs before it)
        cfg = tiny()
        cfg.train.progress, cfg.train.tensorboard = False, False
        runs = two_runs(root / "runs", cfg)
        extra = Section(
            "Results", text="A table a compare would add.", table=Table(["arm", "x"], [["a", "1"]])
        )
        rep = build_report(runs, root / "out" / "report.html", sections=[extra], samples=1, sample_tokens=24)
    assert rep.html.exists() and rep.markdown.exists()
    yield rep.html


def test_report_holds_both_runs_the_config_difference_and_embedded_images(report: Path) -> None:
    page = report.read_text()
    for title in ("Runs", "Results", "Config differences", "Final metrics", "Plots", "Samples", "Hardware"):
        assert f"<h2>{title}" in page
    assert page.count("<td>base</td>") >= 2 and page.count("<td>fast-lr</td>") >= 2  # overview + metrics
    diff = page.split('id="config-differences"')[1].split("<details>")[0]
    assert "1 setting(s) differ" in diff
    assert re.search(r"<td>optim\.lr</td><td class=\"num\">0\.001</td><td class=\"num\">0\.003</td>", diff)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing loaded from the network
    assert "base, sample 1 (seed 0)" in page and "torch" in page


def test_markdown_twin_links_existing_images(report: Path) -> None:
    md = report.with_suffix(".md").read_text()
    assert md.startswith("# steplab report: base, fast-lr")
    assert "| optim.lr | 0.001 | 0.003 |" in md and "## Results" in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links == ["report_files/loss.png", "report_files/dashboard.png"]
    assert all((report.parent / link).is_file() for link in links)


def chromium() -> str | None:
    return next(
        (p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None
    )


def test_report_opens_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    browser = chromium()
    if browser is None:
        pytest.skip("Chromium is not installed")
    # A copy with a probe that records, after load, how many images there are and how many failed.
    probe = (
        "<script>window.addEventListener('load', () => {const imgs = [...document.images];"
        "document.body.dataset.check = `images=${imgs.length} broken=${imgs.filter("
        "i => !i.complete || i.naturalWidth === 0).length}`;});"
        "window.onerror = (m) => { document.body.dataset.error = m; };</script>"
    )
    checked = report.with_name("checked.html")
    checked.write_text(report.read_text().replace("</body>", probe + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(
        [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", checked.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-check="images=2 broken=0"' in dom.stdout and "data-error" not in dom.stdout
    shot = tmp_path / "report.png"
    res = subprocess.run(
        [browser, *flags, "--window-size=1280,2400", f"--screenshot={shot}", report.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert res.returncode == 0 and shot.read_bytes()[:4] == b"\x89PNG" and shot.stat().st_size > 50_000


def test_report_cli_single_run_and_errors(
    tmp_path: Path, tiny_cfg: RunConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_cfg.train.max_steps, tiny_cfg.eval.every = 10, 0
    train(tiny_cfg, tmp_path / "r")
    assert main(["report", str(tmp_path / "r"), "--samples", "0", "--json"]) == 0
    assert '"html"' in capsys.readouterr().out
    page = (tmp_path / "r" / "report.html").read_text()
    assert "<h2>Config</h2>" in page and "<td>optim.lr</td>" in page and "Samples" not in page
    # The samples are the ones `steplab sample` prints for the same prompt, length and seed.
    (text,) = sample_texts(load_run(tmp_path / "r"), n=1, tokens=30, seed=3, prompt="ROMEO:", device="cpu")
    assert (
        main(
            [
                "sample",
                "--run",
                str(tmp_path / "r"),
                "--prompt",
                "ROMEO:",
                "--max-new-tokens",
                "30",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == text + "\n" and text.startswith("ROMEO:") and len(text) > 30
    assert main(["report", str(tmp_path / "r"), "--out", str(tmp_path / "r.pdf")]) == 2
    assert "must end in .html" in capsys.readouterr().err
    with pytest.raises(SteplabError, match="not a steplab run directory"):
        build_report([tmp_path], tmp_path / "x.html")


def test_report_shows_progress_as_plain_lines(
    tmp_path: Path, tiny_cfg: RunConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_cfg.train.max_steps, tiny_cfg.eval.every = 10, 0
    train(tiny_cfg, tmp_path / "r", progress=False)
    capsys.readouterr()
    assert main(["report", str(tmp_path / "r"), "--samples", "2", "--sample-tokens", "8"]) == 0
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines[0] == "report: plotting 1 run" and re.fullmatch(
        r"report: plotting 1 run: done in \d+\.\d s", lines[1]
    )
    assert re.fullmatch(r"samples \[1/2 samples\] r, sample 1 of 2  ETA \d+:\d\d", lines[2])
    assert lines[3] == "samples [2/2 samples] r, sample 2 of 2" and len(lines) == 4
    assert "\x1b" not in captured.err and captured.out.startswith("wrote ")
    assert main(["report", str(tmp_path / "r"), "--samples", "1", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
