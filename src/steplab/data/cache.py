"""Corpus → tokens on disk → batches.

A corpus is a text file, JSONL, CSV or parquet, a directory of them, or a Hugging Face
dataset saved with ``save_to_disk`` (reading is `steplab.data.corpus`). It is tokenized once,
streaming and in worker processes (`steplab.data.encode`), into a memory-mapped array (uint16
when the vocabulary fits, uint32 above 65,536 tokens) next to a small ``meta.json``
(tokenizer, counts, source hash, the tokens' sha256); later runs reuse it while the source and
the tokenizer settings are unchanged. The last `val_fraction` of the tokens is the validation
split. Batches come from `batch_at(step)`: a pure function of (seed, step), so the sampler's
position is just the step and a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from steplab.atomic import io_error, remove_leftovers, write_dir
from steplab.config import DataConfig, TokenizerConfig
from steplab.data import encode
from steplab.data.corpus import TEXT_SUFFIXES, bundled_corpus, read_documents, source_files, source_hash  # noqa: F401 - the readers' names, importable from here as before
from steplab.data.tokenizer import Tokenizer, from_json
from steplab.errors import DataError, StorageError
from steplab.locks import locked
from steplab.runtime import cache_home

CACHE_VERSION = 3  # 2: streamed, the tokenizer trains on the documents with their newlines; 3: sha256


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
    """Tokenize the corpus (or reuse the cache) and split it into train and validation.

    The cache is built once under a lock (a second process preparing the same corpus waits,
    then reuses it), and verified on every use: a truncated or altered ``tokens.bin`` is
    rebuilt with a warning, never trained on.
    """
    cache, settings = cache_dir(data_cfg, tok_cfg)
    meta = _verified_meta(cache, warn=True) if cache.exists() else None
    if meta is None:
        meta = _build_locked(data_cfg, tok_cfg, cache, settings, progress=progress)
    tokens = np.memmap(cache / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["tokens"],))
    tokenizer = from_json(json.loads((cache / "tokenizer.json").read_text()))
    n_val = meta["val_tokens"]
    return TokenData(train=tokens[:-n_val], val=tokens[-n_val:], tokenizer=tokenizer, meta=meta)


def cache_dir(data_cfg: DataConfig, tok_cfg: TokenizerConfig) -> tuple[Path, dict[str, Any]]:
    """The cache directory of this corpus and these settings (keyed by both), and the settings."""
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
    return cache_root(data_cfg) / "tokens" / key, settings


def _file_sha256(path: str) -> str:
    from steplab.data.tokenizer import PretrainedTokenizer

    if not Path(path).is_file():
        PretrainedTokenizer.from_file(path)  # raises the tokenizer's own error
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _verified_meta(cache: Path, *, warn: bool) -> dict[str, Any] | None:
    """The cache's meta.json when tokens.bin is complete and unaltered; None (and a warning) if not."""
    problem = _damage(cache)
    if problem is None:
        return read_meta(cache)
    if warn:
        warnings.warn(f"token cache {cache} is damaged ({problem}); rebuilding it", stacklevel=3)
    return None


def read_meta(cache: Path) -> dict[str, Any]:
    try:
        meta = json.loads((cache / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return meta if isinstance(meta, dict) else {}


def _damage(cache: Path) -> str | None:
    """What is wrong with a cache directory, or None when its checksum holds."""
    meta = read_meta(cache)
    try:
        n, dtype, digest = int(meta["tokens"]), np.dtype(meta["dtype"]), str(meta["sha256"])
        int(meta["val_tokens"])
        from_json(json.loads((cache / "tokenizer.json").read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError, OSError):
        return "meta.json or tokenizer.json missing or unreadable"
    path = cache / "tokens.bin"
    size = path.stat().st_size if path.is_file() else None
    if size != n * dtype.itemsize:
        return f"tokens.bin holds {size} bytes, {n * dtype.itemsize} expected"
    if file_sha256(path) != digest:
        return "tokens.bin does not match its checksum"
    return None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _build_locked(
    data_cfg: DataConfig, tok_cfg: TokenizerConfig, cache: Path, settings: dict[str, Any], *, progress: bool
) -> dict[str, Any]:
    """Build the cache holding its lock; a process that waited for the lock reuses what was built."""
    where = "the token cache in " + str(cache.parent)
    advice = "; or point --data.cache-dir (or STEPLAB_CACHE) at another directory"
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with locked(cache.parent / f".{cache.name}.lock", what=f"token cache {cache}", wait=True):
            if cache.exists() and (meta := _verified_meta(cache, warn=False)) is not None:
                return meta  # built by the process we waited for
            if cache.exists():  # damaged: steplab's own directory, replaced whole
                shutil.rmtree(cache)
            remove_leftovers(cache.parent, cache.name)
            write_dir(cache, lambda tmp: _build_cache(data_cfg, tok_cfg, tmp, settings, progress=progress))
    except StorageError as e:
        raise StorageError(f"{e}{advice}") from None
    except OSError as e:
        raise StorageError(f"{io_error('write', where, e) or e}{advice}") from None
    return read_meta(cache)


def _build_cache(
    data_cfg: DataConfig, tok_cfg: TokenizerConfig, tmp: Path, settings: dict[str, Any], *, progress: bool
) -> None:
    """Train the tokenizer on one pass, encode on a second, split: never the whole corpus in memory.

    Everything goes into `tmp`, which `write_dir` renames into place once complete.
    """
    stats = encode.Stats()
    tokenizer = encode.train(data_cfg, tok_cfg, stats, progress=progress)
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
        "sha256": file_sha256(tmp / "tokens.bin"),
    }
    del tokens
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.to_json()))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
