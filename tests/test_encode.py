"""Streaming tokenization: worker processes give the same tokens, memory stays bounded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from steplab.config import DataConfig, TokenizerConfig
from steplab.data import encode
from steplab.data.cache import prepare
from steplab.data.tokenizer import train_tokenizer
from steplab.errors import DataError

SRC = str(Path(__file__).resolve().parents[1] / "src")


def corpus_dir(root: Path) -> Path:
    """Two text files and a JSONL: documents of every size, some of them empty."""
    d = root / "corpus"
    d.mkdir()
    (d / "a.txt").write_text("First Citizen:\nBefore we proceed, hear me speak.\n\n" * 3000, encoding="utf-8")
    (d / "b.txt").write_text("naïve café — 東京 🎉\n  indented\n" * 2000, encoding="utf-8")
    lines = [json.dumps({"text": f"record {i} " * (i % 7)}) for i in range(500)]
    (d / "c.jsonl").write_text("\n".join(lines), encoding="utf-8")
    return d


@pytest.mark.filterwarnings("ignore:.*mixes text files and tables")
@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_worker_processes_give_the_in_process_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    monkeypatch.setattr(encode, "BATCH_CHARS", 4096)  # many batches in flight
    d = corpus_dir(tmp_path)
    tok_cfg = TokenizerConfig(kind=kind, vocab_size=600)  # type: ignore[arg-type]
    one = prepare(DataConfig(path=str(d), workers=1, cache_dir=str(tmp_path / "c1")), tok_cfg)
    two = prepare(DataConfig(path=str(d), workers=2, cache_dir=str(tmp_path / "c2")), tok_cfg)
    a, b = np.concatenate([one.train, one.val]), np.concatenate([two.train, two.val])
    assert len(a) > 50_000 and np.array_equal(a, b)
    assert one.meta == two.meta
    # Each document encoded whole with the newline that joins it to the next: the same tokens.
    from steplab.data.corpus import read_documents

    docs = list(read_documents(DataConfig(path=str(d))))
    whole = [i for k, doc in enumerate(docs) for i in one.tokenizer.encode(doc + "\n" * (k < len(docs) - 1))]
    assert np.array_equal(a, whole)
    assert one.meta["val_bytes"] == len(one.tokenizer.decode(one.val.tolist()).encode("utf-8"))


def test_char_errors_survive_vectorisation() -> None:
    tok = train_tokenizer(["abc"], TokenizerConfig(kind="char"))
    assert encode.encode_array(tok, ["cab", "a"], np.dtype(np.uint16)).tolist() == [2, 0, 1, 0]
    with pytest.raises(DataError, match="character 'z' is not in this char tokenizer's alphabet"):
        encode.encode_array(tok, ["abz"], np.dtype(np.uint16))


def test_token_bytes_count_utf8_bytes() -> None:
    texts = ["naïve café — 東京 🎉\n", "plain ascii text, some of it repeated\n"] * 30
    for kind in ("char", "byte", "bpe"):
        tok = train_tokenizer(texts, TokenizerConfig(kind=kind, vocab_size=300))  # type: ignore[arg-type]
        ids = np.asarray(tok.encode("".join(texts)))
        assert encode.count_bytes(ids, tok, chunk=7) == len("".join(texts).encode("utf-8"))


MEASURE = textwrap.dedent(
    """
    import json, resource, sys
    from steplab.config import DataConfig, TokenizerConfig
    from steplab.data.cache import prepare
    path, workers = sys.argv[1], int(sys.argv[2])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    data = prepare(DataConfig(path=path, workers=workers), TokenizerConfig(kind="char"))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"growth": (after - before) * 1024, "before": before * 1024,
                      "children": children * 1024, "tokens": len(data.train) + len(data.val)}))
    """
)


def _prepare_growth(tmp_path: Path, mb: int) -> tuple[dict, int]:
    """Peak RSS growth of tokenizing an `mb`-megabyte corpus with 2 workers, in a fresh process."""
    line = "First Citizen: before we proceed any further, hear me speak. Ωμέγα 東京\n"
    n_lines = ((mb << 20) // len(line.encode("utf-8")) // 1000 + 1) * 1000
    p = tmp_path / f"big{mb}.txt"
    with open(p, "w", encoding="utf-8") as fh:
        for _ in range(n_lines // 1000):
            fh.write(line * 1000)
    env = {"PYTHONPATH": SRC, "STEPLAB_CACHE": str(tmp_path / f"cache{mb}"), "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(p), "2"], capture_output=True, text=True, env=env, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout)
    assert r["tokens"] == len(line) * n_lines
    return r, p.stat().st_size


def test_tokenizing_memory_does_not_grow_with_the_corpus(tmp_path: Path) -> None:
    """Memory flat in corpus size, judged against this machine's own baseline: tokenizing 32 MB
    may not take much more memory than tokenizing 8 MB (loading a corpus whole cost +755 MB for
    48 MB: a slope of 15 bytes per corpus byte; streaming's is about 0)."""
    small, small_size = _prepare_growth(tmp_path, 8)
    big, big_size = _prepare_growth(tmp_path, 32)
    slope = (big["growth"] - small["growth"]) / (big_size - small_size)
    assert slope < 0.25, (
        f"peak RSS grew by {slope:.2f} bytes per corpus byte ({small['growth']} -> {big['growth']})"
    )
    # Forked workers share the parent's pages; what they add does not scale with the corpus either.
    assert big["children"] - small["children"] < 0.25 * (big_size - small_size)
