"""Corpus → tokens on disk → batches.

A corpus is a text file, JSONL, CSV or parquet, a directory of them, or a Hugging Face
dataset saved with ``save_to_disk`` (reading is `steplab.data.corpus`). It is tokenized once,
streaming and in worker processes (`steplab.data.encode`), into a memory-mapped array (uint16
when the vocabulary fits, uint32 above 65,536 tokens) next to a small ``meta.json``
(tokenizer, counts, source hash); later runs reuse it while the source and the tokenizer
settings are unchanged. The last `val_fraction` of the tokens is the validation split. Batches
come from `batch_at(step)`: a pure function of (seed, step), so the sampler's position is just
the step and a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steplab.config import DataConfig, TokenizerConfig
from steplab.data import encode
from steplab.data.corpus import TEXT_SUFFIXES, bundled_corpus, read_documents, source_files, source_hash  # noqa: F401 - the readers' names, importable from here as before
from steplab.data.tokenizer import Tokenizer, from_json
from steplab.errors import DataError
from steplab.runtime import cache_home

CACHE_VERSION = 2  # 2: streamed; the tokenizer trains on the documents with their newlines


def cache_root(cfg: DataConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else cache_home()


@dataclass
class TokenData:
    """The tokenized corpus: train and validation token arrays, the tokenizer and metadata."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: Tokenizer
    meta: dict[str, Any]

    @property
    def bytes_per_token(self) -> float:
        """UTF-8 bytes per validation token: turns nats per token into bits per byte."""
        return float(self.meta["val_bytes"]) / max(1, int(self.meta["val_tokens"]))


def prepare(data_cfg: DataConfig, tok_cfg: TokenizerConfig, *, progress: bool = False) -> TokenData:
    """Tokenize the corpus (or reuse the cache) and split it into train and validation."""
    key_src = source_hash(data_cfg)
    settings = {
        "version": CACHE_VERSION,
        "source": key_src,
        "tokenizer": tok_cfg.kind,
        "vocab_size": tok_cfg.vocab_size if tok_cfg.kind == "bpe" else None,
        "errors": data_cfg.errors,
        "text_column": data_cfg.text_column,
        "redact": data_cfg.redact,
        "val_fraction": data_cfg.val_fraction,
    }
    if tok_cfg.kind == "pretrained":  # keyed by the file's content, not its name
        settings["tokenizer_file"] = _file_sha256(tok_cfg.path or "")
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    cache = cache_root(data_cfg) / "tokens" / key
    meta_path = cache / "meta.json"
    if not meta_path.exists():
        _build_cache(data_cfg, tok_cfg, cache, settings, progress=progress)
    meta = json.loads(meta_path.read_text())
    tokens = np.memmap(cache / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["tokens"],))
    tokenizer = from_json(json.loads((cache / "tokenizer.json").read_text()))
    n_val = meta["val_tokens"]
    return TokenData(train=tokens[:-n_val], val=tokens[-n_val:], tokenizer=tokenizer, meta=meta)


def _file_sha256(path: str) -> str:
    from steplab.data.tokenizer import PretrainedTokenizer

    if not Path(path).is_file():
        PretrainedTokenizer.from_file(path)  # raises the tokenizer's own error
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _build_cache(
    data_cfg: DataConfig, tok_cfg: TokenizerConfig, cache: Path, settings: dict[str, Any], *, progress: bool
) -> None:
    """Train the tokenizer on one pass, encode on a second, split: never the whole corpus in memory."""
    stats = encode.Stats()
    tokenizer = encode.train(data_cfg, tok_cfg, stats, progress=progress)
    # Written to a temporary directory and renamed: a crash never leaves a half-written cache.
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tmp-"))
    try:
        stats = encode.Stats()
        n = encode.encode_to_file(data_cfg, tokenizer, tmp / "tokens.bin", stats, progress=progress)
        if not stats.nonblank:
            where = data_cfg.path or "the bundled corpus"
            raise DataError(f"--data: {where} is empty (no text to train on)")
        n_val = max(1, int(round(n * data_cfg.val_fraction)))
        if n - n_val < 2 or n_val < 2:
            raise DataError(f"--data: corpus has only {n} tokens; it needs more text to train and validate")
        dtype = encode.token_dtype(tokenizer)
        tokens = np.memmap(tmp / "tokens.bin", dtype=dtype, mode="r", shape=(n,))
        meta = {
            **settings,
            "dtype": dtype.name,
            "tokens": int(n),
            "val_tokens": int(n_val),
            "val_bytes": encode.count_bytes(tokens[-n_val:], tokenizer),
            "vocab_size": tokenizer.vocab_size,
            "documents": stats.documents,
            "characters": stats.characters,
            "redactions": stats.redactions if data_cfg.redact else None,
        }
        del tokens
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.to_json()))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, cache)
    except OSError:  # another process built the same cache first
        shutil.rmtree(tmp, ignore_errors=True)
