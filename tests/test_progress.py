"""Progress for the person watching: plain lines without control codes off a terminal (the
format CI logs and pipes get), a live bar on one; tables as Markdown or rich the same way."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from steplab.cli.main import main
from steplab.progress import ProgressView, eta_seconds, plural, working
from steplab.reports.document import Table, markdown_table, print_table


class Terminal(io.StringIO):
    """A stream that says it is a terminal (what rich draws on)."""

    def isatty(self) -> bool:
        return True


def test_plain_lines_per_item_and_per_tenth() -> None:
    out = io.StringIO()
    view = ProgressView(4, "runs", stream=out, label="compare", plain_every=0)
    for i in range(1, 5):
        view.update(i, f"run {i}")
    view.close()
    lines = out.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == [f"compare [{i}/4 runs] run {i}" for i in range(1, 5)]
    assert re.fullmatch(r"compare \[1/4 runs\] run 1  ETA \d+:\d\d", lines[0]) and "ETA" not in lines[-1]
    out = io.StringIO()
    view = ProgressView(10.0, "MB", stream=out, label="tokenize", plain_every=0.25)
    for mb in range(1, 11):
        view.update(float(mb), "")
    assert [line.split(" MB]")[0] for line in out.getvalue().splitlines()] == [
        "tokenize [3.0/10.0",
        "tokenize [6.0/10.0",
        "tokenize [9.0/10.0",
        "tokenize [10.0/10.0",
    ]
    silent = io.StringIO()
    ProgressView(3, "runs", stream=silent, enabled=False, plain_every=0).update(1, "x")
    train_like = io.StringIO()
    ProgressView(3, "steps", stream=train_like).update(1, "x")  # train prints its own lines
    assert silent.getvalue() == "" and train_like.getvalue() == ""


def test_a_terminal_gets_a_live_bar() -> None:
    tty = Terminal()
    view = ProgressView(2, "trials", stream=tty, label="tune")
    view.update(1, "best 2.4612 (trial 0)")
    view.line("tune [1/2] trial 0: 2.4612")
    view.close()
    text = tty.getvalue()
    assert "\x1b" in text and "tune [1/2] trial 0: 2.4612" in text and "best 2.4612" in text


def test_eta_plural_and_working() -> None:
    assert eta_seconds(2, 10, 20.0) == 80.0 and eta_seconds(0, 10, 5.0) is None
    assert eta_seconds(5, 10, 10.0, start=3) == 25.0  # only the work done since start sets the pace
    assert [plural(n, "seed") for n in (0, 1, 2)] == ["0 seeds", "1 seed", "2 seeds"]
    out = io.StringIO()
    with working("training the tokenizer", stream=out):
        pass
    assert re.fullmatch(
        r"training the tokenizer\ntraining the tokenizer: done in \d+\.\d s\n", out.getvalue()
    )


def test_tables_are_markdown_in_a_pipe_and_rich_on_a_terminal() -> None:
    table = Table(["rank", "variant", "final val loss"], [["1", "muon", "1.6371"], ["2", "adamw", "1.7644"]])
    pipe = io.StringIO()
    print_table(table, pipe)
    assert pipe.getvalue() == markdown_table(table) + "\n"
    assert pipe.getvalue().splitlines()[:3] == [
        "| rank | variant | final val loss |",
        "|---|---|---|",
        "| 1 | muon | 1.6371 |",
    ]
    tty = Terminal()
    print_table(table, tty)
    drawn = re.sub(r"\x1b\[[0-9;]*m", "", tty.getvalue())  # bold headers: styles off for the check
    assert "┃ rank ┃ variant ┃" in drawn and "│ muon " in drawn and "|---|" not in drawn
    assert re.search(r"│\s+1 │", drawn)  # numbers right-aligned


def test_data_prepare_shows_progress(
    small_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["data", "prepare", "--data.path", str(small_corpus), "--tokenizer", "bpe"]
    argv += ["--tokenizer.vocab-size", "300", "--data.cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert err[0] == f"training the bpe tokenizer (vocab 300) on {small_corpus} (0.0 MB)"
    assert err[err.index("tokenizer: learning merges") - 1].startswith("tokenizer [0.0/0.0 MB] reading")
    trained = next(line for line in err if line.startswith("tokenizer trained"))
    assert re.fullmatch(r"tokenizer trained: 300 tokens in \d+\.\d s", trained)
    assert any(line.startswith("tokenizing ") for line in err) and err[-1].startswith("tokenized: ")
    assert "\x1b" not in captured.err and "tokens" in captured.out
