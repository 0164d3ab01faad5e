"""Corpus readers: every format yields the same documents, errors name the file and row."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from steplab.config import DataConfig, TokenizerConfig
from steplab.data import corpus
from steplab.data.cache import prepare
from steplab.data.corpus import read_documents, read_pieces, safe_cut
from steplab.data.tokenizer import train_tokenizer
from steplab.errors import DataError

QUOTED = 'naïve, "quoted" '
DOCS = [f"doc {i}: «{QUOTED * (i % 3)}»\nsecond line, 東京 {i}" for i in range(40)] + ["", "  "]


def write_source(kind: str, root: Path, docs: list[str], column: str = "body") -> Path:
    """`docs` as a source of the given kind, with an extra column that must be ignored."""
    rows = [{"id": i, column: d} for i, d in enumerate(docs)]
    if kind == "jsonl":
        p = root / "c.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
        return p
    if kind == "csv":
        p = root / "c.csv"
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=["id", column])
            w.writeheader()
            w.writerows(rows)
        return p
    if kind == "parquet":
        pa = pytest.importorskip("pyarrow")
        pq = pytest.importorskip("pyarrow.parquet")
        p = root / "c.parquet"
        pq.write_table(pa.table({"id": list(range(len(docs))), column: docs}), p, row_group_size=7)
        return p
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"id": list(range(len(docs))), column: docs})
    p = root / "saved"
    if kind == "dataset_dict":
        datasets.DatasetDict({"train": ds, "test": ds.select(range(3))}).save_to_disk(str(p))
    else:
        ds.save_to_disk(str(p), max_shard_size="2KB")  # several shards, read in order
    return p


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "dataset", "dataset_dict"])
def test_every_format_reads_the_same_documents(tmp_path: Path, kind: str) -> None:
    src = write_source(kind, tmp_path, DOCS)
    cfg = DataConfig(path=str(src), text_column="body")
    assert list(read_documents(cfg)) == DOCS
    data = prepare(cfg, TokenizerConfig(kind="char"))
    tokens = np.concatenate([data.train, data.val])
    assert data.tokenizer.decode(tokens.tolist()) == "\n".join(DOCS)
    assert data.meta["documents"] == len(DOCS)


def test_a_directory_of_tables_is_read_in_order(tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    write_source("jsonl", d / "a", DOCS[:10], column="text")
    write_source("csv", d / "b", DOCS[10:], column="text")
    assert list(read_documents(DataConfig(path=str(d)))) == DOCS
    (d / "README.md").write_text("a dataset card")
    with pytest.warns(UserWarning, match="mixes text files and tables"):
        docs = list(read_documents(DataConfig(path=str(d))))
    assert docs[0] == "a dataset card"


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("jsonl", r"c.jsonl:1: no 'text' field"),
        ("csv", r"c.csv:1: no 'text' column \(columns: id, body"),
        ("parquet", r"c.parquet: no 'text' column \(columns: id, body"),
        ("dataset", r"saved has no 'text' column \(columns: id, body"),
    ],
)
def test_a_missing_column_lists_the_columns(tmp_path: Path, kind: str, message: str) -> None:
    src = write_source(kind, tmp_path, DOCS)
    with pytest.raises(DataError, match=message):
        list(read_documents(DataConfig(path=str(src), text_column="text")))


def test_bad_values_name_the_row(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": ["ok", "fine", None]}), tmp_path / "n.parquet")
    with pytest.raises(DataError, match=r"n.parquet row 3: field 'text' is not a string \(got null\)"):
        list(read_documents(DataConfig(path=str(tmp_path / "n.parquet"))))
    (tmp_path / "short.csv").write_text('a,text\n1,"ok"\n2\n')
    with pytest.raises(DataError, match=r"short.csv:3: 1 fields, no 'text' value"):
        list(read_documents(DataConfig(path=str(tmp_path / "short.csv"))))


def test_a_dataset_dict_without_train_points_at_a_split(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a", "b"]})
    datasets.DatasetDict({"validation": ds}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="splits validation but no 'train'; pass the split's directory"):
        list(read_documents(DataConfig(path=str(tmp_path / "dd"))))
    assert list(read_documents(DataConfig(path=str(tmp_path / "dd" / "validation")))) == ["a", "b"]


@pytest.mark.parametrize(
    "name", ["roneneldan/TinyStories", "https://example.com/corpus.txt", "hf://datasets/x/y"]
)
def test_hub_names_and_urls_are_never_downloaded(name: str) -> None:
    with pytest.raises(DataError, match="never downloads"):
        list(read_documents(DataConfig(path=name)))


def test_safe_cut_needs_text_on_both_sides_of_the_newline() -> None:
    assert safe_cut("ab\ncd") == 3
    assert safe_cut("ab \ncd") == -1 and safe_cut("ab\n cd") == -1 and safe_cut("ab\n\ncd") == -1
    assert safe_cut("x\ny\n\nz  \nw", lo=3) == -1 and safe_cut("x\ny\n\nz  \nw") == 2


def tricky_text(n: int, seed: int = 0) -> str:
    """Words, runs of spaces and newlines, unicode spaces, CRLF: where pre-tokenizers are fussy."""
    rng = random.Random(seed)
    atoms = [
        "the",
        "Ωμέγα",
        "東京",
        "42",
        "'s",
        "!!",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        " \n",
        "\r\n",
        "\u3000",
        "\xa0",
        "x",
    ]
    return "".join(rng.choice(atoms) for _ in range(n))


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_text_pieces_encode_like_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(corpus, "BLOCK", 512)  # hundreds of cuts in a small file
    text = tricky_text(20_000)
    p = tmp_path / "t.txt"
    p.write_text(text, encoding="utf-8", newline="")
    pieces = list(read_pieces(DataConfig(path=str(p))))
    assert len(pieces) > 50 and "".join(x.text for x in pieces) == text
    assert [x.end for x in pieces].count(True) == 1 and pieces[-1].end
    tok = train_tokenizer([text], TokenizerConfig(kind=kind, vocab_size=400))  # type: ignore[arg-type]
    assert [i for x in pieces for i in tok.encode(x.text)] == tok.encode(text)


def test_not_utf8_names_the_byte_past_the_first_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(corpus, "BLOCK", 64)
    p = tmp_path / "bad.txt"
    p.write_bytes(b"line one\n" * 50 + b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8 at byte 453"):
        list(read_pieces(DataConfig(path=str(p))))
