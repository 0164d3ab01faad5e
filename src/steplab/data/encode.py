"""Corpus → token file, streaming: train the tokenizer on a pass over the text, then encode in
worker processes and append the tokens to the file as each piece comes back.

Memory stays bounded whatever the corpus size: `steplab.data.corpus` yields pieces of at most about
a megabyte, at most two batches per worker are in flight, and nothing holds the whole text or
the whole token array. The tokens are `tokenizer.encode` of each document followed by a newline
(the last document by nothing), exactly what encoding the joined corpus document by document
gives.

Workers are forked on Linux: a spawned worker re-imports the caller's main module, which breaks
a script without an ``if __name__ == "__main__"`` guard. A forked worker touches nothing of the
parent's but numpy and the tokenizer rebuilt from JSON (no torch, no OpenMP, tokenizers' own
thread pool off), so the usual hazards of forking a threaded process do not apply. Elsewhere
workers are spawned, and a script calling `prepare` needs the guard.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steplab.config import DataConfig, TokenizerConfig
from steplab.data.corpus import Piece, read_documents, read_pieces, source_bytes
from steplab.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    CharTokenizer,
    PretrainedTokenizer,
    Tokenizer,
    from_json,
    train_tokenizer,
)

BATCH_CHARS = 1 << 18  # characters encoded at a time (a few MB of temporaries at most)
PARALLEL_BYTES = 64 << 20  # corpora below this are encoded in-process unless --data.workers asks
MAX_AUTO_WORKERS = 8


@dataclass
class Stats:
    documents: int = 0
    characters: int = 0
    nonblank: bool = False
    tokens: int = 0
    pos: int = 0  # source bytes read
    redactions: dict[str, int] | None = None  # placeholders inserted, per kind (with --data.redact)


def pieces(cfg: DataConfig, stats: Stats | None = None) -> Iterator[Piece]:
    """The corpus's pieces; with --data.redact, whole documents (a secret may span a piece cut).

    Redaction counts are added to `stats.redactions` when `stats` is given.
    """
    if not cfg.redact:
        yield from read_pieces(cfg)
        return
    from steplab.data.redact import redact

    for doc in read_documents(cfg):
        text, counts = redact(doc)
        if stats is not None:
            stats.redactions = stats.redactions or {}
            for kind, n in counts.items():
                stats.redactions[kind] = stats.redactions.get(kind, 0) + n
        yield Piece(text, True, 0)


def units(stream: Iterable[Piece], stats: Stats) -> Iterator[str]:
    """Texts to encode one by one: pieces, with "\\n" after each document but the last."""
    held: Piece | None = None
    for p in stream:
        if held is not None:
            yield _count(held.text + "\n", stats)
            held = None
        stats.pos = p.pos
        if p.end:
            stats.documents += 1
            held = p
        else:
            yield _count(p.text, stats)
    if held is not None:
        yield _count(held.text, stats)


def _count(text: str, stats: Stats) -> str:
    stats.characters += len(text)
    if not stats.nonblank and text.strip():
        stats.nonblank = True
    return text


def train(
    data_cfg: DataConfig, tok_cfg: TokenizerConfig, stats: Stats, *, progress: bool = False
) -> Tokenizer:
    """Train the tokenizer on one streamed pass (char: the alphabet; bpe: merges; byte and
    pretrained: nothing to learn, the corpus is not read).

    With `progress`, a bar over the megabytes read, then "learning merges" while BPE computes
    them (that part has no measurable progress).
    """
    if tok_cfg.kind == "byte":
        return ByteTokenizer()
    if tok_cfg.kind == "pretrained":
        return PretrainedTokenizer.from_file(tok_cfg.path or "")
    from steplab.progress import ProgressView, Spinner

    total_mb = max(source_bytes(data_cfg) / 1e6, 1e-6)
    what = f"bpe tokenizer (vocab {tok_cfg.vocab_size})" if tok_cfg.kind == "bpe" else "char tokenizer"
    view = ProgressView(total_mb, "MB", enabled=progress, label="tokenizer", plain_every=0.25)
    view.line(f"training the {what} on {data_cfg.path or 'the bundled corpus'} ({total_mb:,.1f} MB)")
    t0 = time.perf_counter()
    merging = Spinner("tokenizer: learning merges", enabled=progress and tok_cfg.kind == "bpe")
    try:
        tok = train_tokenizer(_reading(units(pieces(data_cfg), stats), stats, view, merging), tok_cfg)
    finally:
        view.close()
        merging.stop("")
    view.line(f"tokenizer trained: {tok.vocab_size} tokens in {time.perf_counter() - t0:.1f} s")
    return tok


def _reading(texts: Iterable[str], stats: Stats, view: Any, then: Any) -> Iterator[str]:
    """`texts`, moving the view's bar by the source bytes read; once all are read, the bar
    makes way for `then` (a spinner: BPE's merges come after the reading, unmeasured)."""
    for text in texts:
        yield text
        view.update(stats.pos / 1e6, "reading")
    view.close()
    then.start()


def token_dtype(tokenizer: Tokenizer) -> np.dtype:
    """uint16 while every id fits (vocabularies up to 65,536), uint32 above (Llama 3's 128k, ...)."""
    return np.dtype(np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32)


def encode_array(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> np.ndarray:
    """Tokens of the texts, concatenated: vectorised for char and byte, batched for BPE."""
    if isinstance(tok, BPETokenizer):
        ids = tok.encode_batch(texts)
        return np.concatenate([np.array(doc, dtype=dtype) for doc in ids] or [np.zeros(0, dtype=dtype)])
    if not isinstance(tok, (CharTokenizer, ByteTokenizer)):
        return np.asarray([i for t in texts for i in tok.encode(t)], dtype=dtype)
    text = "".join(texts)
    lut = _char_lut(tok) if isinstance(tok, CharTokenizer) else None
    step = BATCH_CHARS  # slices keep the temporaries to a few MB
    return np.concatenate(
        [_encode_slice(tok, text[i : i + step], lut, dtype) for i in range(0, len(text), step)]
        or [np.zeros(0, dtype=dtype)]
    )


def _char_lut(tok: CharTokenizer) -> np.ndarray:
    """Code point -> id (-1: not in the alphabet), up to the alphabet's largest code point."""
    cps = np.array([ord(c) for c in tok.chars], dtype=np.int64)
    lut = np.full(int(cps.max(initial=0)) + 1, -1, dtype=np.int32)
    lut[cps] = np.arange(len(cps), dtype=np.int32)
    return lut


def _encode_slice(
    tok: CharTokenizer | ByteTokenizer, text: str, lut: np.ndarray | None, dtype: np.dtype
) -> np.ndarray:
    if lut is None:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(dtype)
    cps = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    ids = lut[np.minimum(cps, len(lut) - 1)]
    bad = (ids < 0) | (cps >= len(lut))
    if bad.any():
        tok.encode(chr(int(cps[int(np.argmax(bad))])))  # raises the tokenizer's own error
    return ids.astype(dtype)


def token_bytes(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each token stands for (byte-level BPE: one symbol per byte)."""
    if isinstance(tok, CharTokenizer):
        return np.array([len(c.encode("utf-8", "surrogatepass")) for c in tok.chars], dtype=np.int64)
    if isinstance(tok, BPETokenizer):
        return np.array([len(tok.tok.id_to_token(i)) for i in range(tok.vocab_size)], dtype=np.int64)
    return np.ones(tok.vocab_size, dtype=np.int64)


def count_bytes(tokens: np.ndarray, tok: Tokenizer, chunk: int = 1 << 20) -> int:
    """Bytes of text behind `tokens`, read in chunks (a memmap is never loaded whole).

    A pretrained tokenizer that is not byte-level (SentencePiece-style "▁" words, byte
    fallback, WordPiece) has no per-token byte count: its tokens are decoded in chunks and
    the text measured (off by at most a character at each chunk's edge).
    """
    if isinstance(tok, PretrainedTokenizer) and not tok.byte_level:
        step = 1 << 16
        return sum(
            len(tok.decode(tokens[i : i + step].tolist()).encode("utf-8"))
            for i in range(0, len(tokens), step)
        )
    table = token_bytes(tok).astype(np.uint16)  # 2 bytes per token of temporaries, not 8
    return sum(int(table[tokens[i : i + chunk]].sum(dtype=np.int64)) for i in range(0, len(tokens), chunk))


def _batches(texts: Iterable[str], stats: Stats) -> Iterator[tuple[list[str], int]]:
    batch: list[str] = []
    size = 0
    for t in texts:
        batch.append(t)
        size += len(t)
        if size >= BATCH_CHARS:
            yield batch, stats.pos
            batch, size = [], 0
    if batch:
        yield batch, stats.pos


# --- worker processes --------------------------------------------------------------------------

_worker: dict[str, Any] = {}


def _init_worker(tok_json: str, dtype: str) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # the processes are the parallelism
    _worker["tok"], _worker["dtype"] = from_json(json.loads(tok_json)), np.dtype(dtype)


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    return encode_array(_worker["tok"], texts, _worker["dtype"])


def resolve_workers(cfg: DataConfig) -> int:
    """--data.workers, or for 0 one per CPU (at most 8) on corpora of 64 MB and more, else none."""
    if cfg.workers:
        return cfg.workers
    if source_bytes(cfg) < PARALLEL_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, MAX_AUTO_WORKERS))


def encode_to_file(
    data_cfg: DataConfig, tok: Tokenizer, out: Path, stats: Stats, *, progress: bool = False
) -> int:
    """Append the corpus's tokens to `out` (dtype `token_dtype(tok)`); return how many."""
    from steplab.progress import ProgressView

    dtype = token_dtype(tok)
    workers = resolve_workers(data_cfg)
    total_mb = max(source_bytes(data_cfg) / 1e6, 1e-6)
    view = ProgressView(total_mb, "MB", enabled=progress, label="tokenize", plain_every=0.25)
    how = f"{workers} worker processes" if workers > 1 else "in-process"
    view.line(f"tokenizing {data_cfg.path or 'the bundled corpus'} ({total_mb:,.1f} MB, {tok.kind}, {how})")
    t0 = time.perf_counter()
    batches = _batches(units(pieces(data_cfg, stats), stats), stats)
    n = 0
    with open(out, "wb") as fh:

        def write(ids: np.ndarray, pos: int) -> None:
            nonlocal n
            ids.tofile(fh)
            n += len(ids)
            view.update(pos / 1e6, f"{n:,} tokens")

        if workers <= 1:
            for batch, pos in batches:
                write(encode_array(tok, batch, dtype), pos)
        else:
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            init = (json.dumps(tok.to_json()), dtype.name)
            ex = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=init)
            try:
                window: deque[tuple[Future, int]] = deque()
                for batch, pos in batches:
                    window.append((ex.submit(_encode_in_worker, batch), pos))
                    if len(window) >= 2 * workers:  # bounded: the reader waits for the oldest batch
                        fut, p = window.popleft()
                        write(fut.result(), p)
                while window:
                    fut, p = window.popleft()
                    write(fut.result(), p)
            finally:
                ex.shutdown(cancel_futures=True)
    view.close()
    view.line(f"tokenized: {n:,} tokens in {time.perf_counter() - t0:.1f} s")
    stats.tokens = n
    return n
