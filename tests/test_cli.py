"""Bad input through the command line: one line (what, where, what to do), exit 2, nothing overwritten.

Config values are covered in test_config.py and checkpoints in test_checkpoint.py; this file
drives the corpus mistakes and the run directory through `steplab train` itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from steplab.cli.main import main

TRAIN = ["train", "--preset", "tiny", "--quiet", "--train.tensorboard", "false"]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def jsonl(*lines: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / "c.jsonl"
        p.write_text("\n".join(lines) + "\n")
        return p

    return make


def text(data: bytes, name: str = "c.txt") -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    return make


BAD_CORPORA = [
    (
        "missing-path",
        lambda d: d / "nope.txt",
        [],
        "nope.txt does not exist (pass a text, .jsonl, .csv or .parquet file, a directory, or a dataset saved with save_to_disk)",
    ),
    ("empty-corpus", text(b""), [], "is empty (no text to train on)"),
    ("empty-directory", lambda d: (d / "sub").mkdir() or d / "sub", [], "holds no text files"),
    (
        "shorter-than-a-window",
        text(b"to be or not to be, that is the question. " * 3),
        ["--model.block-size", "128"],
        "fewer than one context window (129); use more text or a smaller --model.block-size",
    ),
    (
        "not-utf8",
        text(b"caf\xe9 au lait " * 50),
        [],
        "not UTF-8 at byte 3 (re-encode the file, or pass --data.errors replace)",
    ),
    (
        "jsonl-missing-field",
        jsonl('{"text": "ok ok ok"}', '{"body": "no"}'),
        [],
        "c.jsonl:2: no 'text' field",
    ),
    (
        "jsonl-broken-line",
        jsonl('{"text": "ok"}', '{"text": "ok"}', '{"text": broken'),
        [],
        "c.jsonl:3: broken JSON",
    ),
]


@pytest.mark.parametrize(
    ("make", "extra", "message"), [c[1:] for c in BAD_CORPORA], ids=[c[0] for c in BAD_CORPORA]
)
def test_bad_corpus_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    extra: list[str],
    message: str,
) -> None:
    corpus = make(tmp_path)
    run = tmp_path / "run"
    code, out, err = cli(capsys, *TRAIN, "--data", str(corpus), *extra, "--run-dir", str(run))
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not run.exists()  # the run directory is created only once the corpus and config are good


def test_non_utf8_is_accepted_with_replace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = text(b"caf\xe9 au lait " * 200)(tmp_path)
    code, out, err = cli(
        capsys,
        *TRAIN,
        "--data",
        str(corpus),
        "--data.errors",
        "replace",
        "--train.max-steps",
        "2",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert code == 0 and "finished: 2 steps" in out


@pytest.fixture
def finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    run = tmp_path / "run"
    assert main([*TRAIN, "--train.max-steps", "3", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_existing_run_dir_without_resume_or_overwrite(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(finished_run)
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(finished_run))
    assert code == 2 and err.count("\n") == 1
    assert (
        f"run directory {finished_run} already holds a run; pass --resume to continue it, --overwrite" in err
    )
    assert snapshot(finished_run) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/nonexistent/corpus.txt"], "does not exist"),
        (["--optim.lr", "-1"], "--optim.lr must be > 0"),
        (["--optim.name", "adamx"], "unknown optimizer 'adamx'"),
    ],
    ids=["bad-corpus", "bad-value", "unknown-optimizer"],
)
def test_overwrite_with_bad_input_keeps_the_old_run(
    finished_run: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = snapshot(finished_run)
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(finished_run), "--overwrite", *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert snapshot(finished_run) == before


def test_run_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(tmp_path / "file"))
    assert code == 2 and "is a file, not a directory" in err


def test_zero_token_budget_and_bad_guard_settings(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--train.max-tokens", "0"], "--train.max-tokens must be >= 1 (got 0)"),
        (["--guard.policy", "pray"], "--guard.policy must be one of off, stop, skip, rollback (got 'pray')"),
        (["--guard.lr-factor", "2"], "--guard.lr-factor must be <= 1 (got 2)"),
    ]:
        code, out, err = cli(capsys, *TRAIN, *argv, "--print-config")
        assert code == 2 and message in err and err.count("\n") == 1 and not out
