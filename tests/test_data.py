"""Data: sources, caching, splits, the seeded sampler, and clear errors on bad corpora."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from steplab.config import DataConfig, TokenizerConfig
from steplab.data.batches import BatchSampler, val_windows
from steplab.data.cache import prepare
from steplab.data.corpus import bundled_corpus
from steplab.errors import DataError


def test_bundled_corpus_ships_with_the_package() -> None:
    text = bundled_corpus().read_text(encoding="utf-8")
    assert text.startswith("First Citizen:") and len(text) > 1_000_000


def test_prepare_splits_and_caches(small_corpus: Path, tmp_path: Path) -> None:
    cfg = DataConfig(path=str(small_corpus), cache_dir=str(tmp_path / "cache"))
    data = prepare(cfg, TokenizerConfig(kind="char"))
    total = len(data.train) + len(data.val)
    assert total == len(small_corpus.read_text())
    assert len(data.val) == round(0.1 * total)
    assert data.train.dtype == np.uint16
    # the validation split is the end of the corpus
    assert data.tokenizer.decode(data.val.tolist()) == small_corpus.read_text()[-len(data.val) :]
    meta_files = list((tmp_path / "cache" / "tokens").glob("*/meta.json"))
    assert len(meta_files) == 1
    mtime = meta_files[0].stat().st_mtime_ns
    prepare(cfg, TokenizerConfig(kind="char"))  # reused, not rebuilt
    assert meta_files[0].stat().st_mtime_ns == mtime
    small_corpus.write_text(small_corpus.read_text() + "more text\n")  # changed source: new cache
    prepare(cfg, TokenizerConfig(kind="char"))
    assert len(list((tmp_path / "cache" / "tokens").glob("*/meta.json"))) == 2


def test_directory_and_jsonl_sources(tmp_path: Path) -> None:
    d = tmp_path / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("alpha " * 100)
    (d / "b.md").write_text("beta " * 100)
    (d / "skip.bin").write_bytes(b"\x00\x01")
    data = prepare(DataConfig(path=str(d)), TokenizerConfig(kind="byte"))
    assert len(data.train) + len(data.val) == 600 + 500 + 1
    j = tmp_path / "c.jsonl"
    j.write_text("\n".join(json.dumps({"body": f"doc {i} " * 20}) for i in range(10)))
    data = prepare(DataConfig(path=str(j), text_column="body"), TokenizerConfig(kind="char"))
    assert data.meta["documents"] == 10


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text(""), "is empty"),
        (lambda p: p.write_bytes(b"caf\xe9 au lait " * 50), "not UTF-8 at byte 3"),
        (lambda p: p.write_text("ab"), "corpus has only 2 tokens"),
    ],
    ids=["missing", "empty", "not-utf8", "too-short"],
)
def test_bad_text_corpora(tmp_path: Path, setup, message: str) -> None:  # noqa: ANN001
    p = tmp_path / "corpus.txt"
    setup(p)
    with pytest.raises(DataError, match=message):
        prepare(DataConfig(path=str(p)), TokenizerConfig(kind="char"))


def test_non_utf8_can_be_replaced(tmp_path: Path) -> None:
    p = tmp_path / "latin1.txt"
    p.write_bytes(b"caf\xe9 au lait " * 50)
    data = prepare(DataConfig(path=str(p), errors="replace"), TokenizerConfig(kind="char"))
    assert "\ufffd" in data.tokenizer.chars


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"text": "ok"}', '{"txt": "no"}'], "c.jsonl:2: no 'text' field"),
        (['{"text": "ok"}', "", '{"text": broken'], "c.jsonl:3: broken JSON"),
        (['{"text": 5}'], "c.jsonl:1: field 'text' is not a string"),
    ],
)
def test_bad_jsonl_names_the_line(tmp_path: Path, lines: list[str], message: str) -> None:
    p = tmp_path / "c.jsonl"
    p.write_text("\n".join(lines))
    with pytest.raises(DataError, match=message):
        prepare(DataConfig(path=str(p)), TokenizerConfig(kind="char"))


def test_hub_names_are_not_downloaded() -> None:
    with pytest.raises(DataError, match="never downloads"):
        prepare(DataConfig(path="roneneldan/TinyStories"), TokenizerConfig(kind="char"))


def test_sampler_is_a_pure_function_of_seed_and_index() -> None:
    tokens = np.arange(1000, dtype=np.uint16)
    a = BatchSampler(tokens, 16, 4, seed=1, device=torch.device("cpu"))
    b = BatchSampler(tokens, 16, 4, seed=1, device=torch.device("cpu"))
    c = BatchSampler(tokens, 16, 4, seed=2, device=torch.device("cpu"))
    x7, y7 = a.batch_at(7)
    assert torch.equal(x7, b.batch_at(7)[0])
    assert not torch.equal(x7, c.batch_at(7)[0])
    assert not torch.equal(x7, a.batch_at(8)[0])
    assert x7.shape == (4, 16) and torch.equal(y7[:, :-1], x7[:, 1:])  # targets are inputs shifted by one


def test_sampler_rejects_corpus_shorter_than_a_window() -> None:
    with pytest.raises(DataError, match="fewer than one context window"):
        BatchSampler(np.arange(10), 16, 4, seed=0, device=torch.device("cpu"))


def test_val_windows_cover_the_split_or_a_seeded_subset() -> None:
    tokens = np.arange(641, dtype=np.uint16)
    x, y = val_windows(tokens, 64, None, seed=0)
    assert x.shape == (10, 64) and torch.equal(x.flatten(), torch.arange(640))
    xs, _ = val_windows(tokens, 64, 3, seed=0)
    xs2, _ = val_windows(tokens, 64, 3, seed=0)
    assert xs.shape == (3, 64) and torch.equal(xs, xs2)
