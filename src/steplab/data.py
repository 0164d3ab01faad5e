"""Corpus → tokens on disk → batches.

A corpus is a text file, a directory of text files, or JSONL with a text field. It is
tokenized once into a memory-mapped array (uint16 when the vocabulary fits) next to a small
``meta.json`` (tokenizer, counts, source hash); later runs reuse it while the source and the
tokenizer settings are unchanged. The last `val_fraction` of the tokens is the validation
split. Batches come from `batch_at(step)`: a pure function of (seed, step), so the sampler's
position is just the step and a resumed run draws exactly the batches it would have drawn.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from steplab.config import DataConfig, TokenizerConfig
from steplab.errors import DataError
from steplab.tokenizer import Tokenizer, from_json, train_tokenizer

TEXT_SUFFIXES = {
    ".txt",
    ".md",
    ".rst",
    ".text",
    ".py",
    ".c",
    ".h",
    ".js",
    ".ts",
    ".rs",
    ".go",
    ".java",
    ".tex",
}
CACHE_VERSION = 1


def bundled_corpus() -> Path:
    """Tiny Shakespeare, shipped inside the package (public domain)."""
    return Path(str(resources.files("steplab") / "data" / "tinyshakespeare.txt"))


def source_files(cfg: DataConfig) -> list[Path]:
    path = Path(cfg.path) if cfg.path else bundled_corpus()
    if cfg.path and "://" not in cfg.path and not path.exists() and cfg.path.count("/") == 1:
        raise DataError(
            f"--data: {cfg.path} does not exist; steplab never downloads from a hub — "
            "save the dataset locally and pass its path"
        )
    if not path.exists():
        raise DataError(f"--data: {path} does not exist (pass a text file, a directory or a .jsonl file)")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        files = [p for p in files if p.suffix.lower() in TEXT_SUFFIXES | {".jsonl"}]
        if not files:
            raise DataError(
                f"--data: directory {path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))}, .jsonl)"
            )
        return files
    return [path]


def read_documents(cfg: DataConfig) -> Iterator[str]:
    """Yield the corpus's documents as strings, with errors that name the file and line."""
    for path in source_files(cfg):
        if path.suffix.lower() == ".jsonl":
            yield from _read_jsonl(path, cfg)
            continue
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8", errors=cfg.errors)
        except UnicodeDecodeError as e:
            raise DataError(
                f"{path}: not UTF-8 at byte {e.start} (re-encode the file, or pass --data.errors replace)"
            ) from None
        yield text


def _read_jsonl(path: Path, cfg: DataConfig) -> Iterator[str]:
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                line = raw.decode("utf-8", errors=cfg.errors)
            except UnicodeDecodeError:
                raise DataError(
                    f"{path}:{lineno}: not UTF-8 (re-encode the file, or pass --data.errors replace)"
                ) from None
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: broken JSON ({e.msg}); fix or remove that line") from None
            if not isinstance(record, dict) or cfg.text_column not in record:
                raise DataError(
                    f"{path}:{lineno}: no {cfg.text_column!r} field "
                    "(choose the field with --data.text-column)"
                )
            value = record[cfg.text_column]
            if not isinstance(value, str):
                raise DataError(f"{path}:{lineno}: field {cfg.text_column!r} is not a string")
            yield value


def source_hash(cfg: DataConfig) -> str:
    """sha256 over the files' names, sizes and contents: the cache key of the corpus."""
    h = hashlib.sha256()
    for p in source_files(cfg):
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def cache_root(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    if os.environ.get("STEPLAB_CACHE"):
        return Path(os.environ["STEPLAB_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "steplab"


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
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    cache = cache_root(data_cfg) / "tokens" / key
    meta_path = cache / "meta.json"
    if not meta_path.exists():
        _build_cache(data_cfg, tok_cfg, cache, settings)
    meta = json.loads(meta_path.read_text())
    tokens = np.memmap(cache / "tokens.bin", dtype=np.dtype(meta["dtype"]), mode="r", shape=(meta["tokens"],))
    tokenizer = from_json(json.loads((cache / "tokenizer.json").read_text()))
    n_val = meta["val_tokens"]
    return TokenData(train=tokens[:-n_val], val=tokens[-n_val:], tokenizer=tokenizer, meta=meta)


def _build_cache(
    data_cfg: DataConfig, tok_cfg: TokenizerConfig, cache: Path, settings: dict[str, Any]
) -> None:
    docs = list(read_documents(data_cfg))
    redactions: dict[str, int] | None = None
    if data_cfg.redact:
        from steplab.redact import redact

        redactions = {}
        for i, d in enumerate(docs):
            docs[i], counts = redact(d)
            for kind, n in counts.items():
                redactions[kind] = redactions.get(kind, 0) + n
    text = "\n".join(docs)
    if not text.strip():
        where = data_cfg.path or "the bundled corpus"
        raise DataError(f"--data: {where} is empty (no text to train on)")
    tokenizer = train_tokenizer(docs + ["\n"] if len(docs) > 1 else docs, tok_cfg)  # "\n" joins documents
    ids = _encode_all(tokenizer, docs)
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    n_val = max(1, int(round(len(ids) * data_cfg.val_fraction)))
    if len(ids) - n_val < 2 or n_val < 2:
        raise DataError(
            f"--data: corpus has only {len(ids)} tokens; it needs more text to train and validate"
        )
    val_text = tokenizer.decode(ids[-n_val:].tolist())
    meta = {
        **settings,
        "dtype": np.dtype(dtype).name,
        "tokens": int(len(ids)),
        "val_tokens": int(n_val),
        "val_bytes": len(val_text.encode("utf-8")),
        "vocab_size": tokenizer.vocab_size,
        "documents": len(docs),
        "characters": len(text),
        "redactions": redactions,
    }
    # Written to a temporary directory and renamed: a crash never leaves a half-written cache.
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache.parent, prefix=".tmp-"))
    ids.astype(dtype).tofile(tmp / "tokens.bin")
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.to_json()))
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(tmp, cache)
    except OSError:  # another process built the same cache first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def _encode_all(tokenizer: Tokenizer, docs: list[str]) -> np.ndarray:
    """Encode documents joined by newlines (the same text the tokenizer was trained on)."""
    parts = []
    for i, d in enumerate(docs):
        parts.append(np.asarray(tokenizer.encode(d + ("\n" if i < len(docs) - 1 else "")), dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


# --- batches ------------------------------------------------------------------------------


class BatchSampler:
    """Random windows of `block_size + 1` tokens; batch k is a pure function of (seed, k)."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int, device: torch.device):
        if len(tokens) <= block_size + 1:
            raise DataError(
                f"training split has {len(tokens)} tokens, fewer than one context window "
                f"({block_size + 1}); use more text or a smaller --model.block-size"
            )
        self.data = torch.from_numpy(np.asarray(tokens).astype(np.int64))
        self.block_size, self.batch_size, self.seed, self.device = block_size, batch_size, seed, device
        self.offsets = torch.arange(block_size + 1)

    def batch_at(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The index-th micro-batch: inputs and targets, (B, T) each."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        starts = torch.randint(len(self.data) - self.block_size - 1, (self.batch_size,), generator=g)
        window = self.data[starts[:, None] + self.offsets]  # (B, T + 1)
        x, y = window[:, :-1], window[:, 1:]
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x.to(self.device), y.to(self.device)


def val_windows(
    tokens: np.ndarray, block_size: int, max_windows: int | None, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows over the validation split (or a fixed seeded subset of them)."""
    data = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    if len(data) < 2:
        raise DataError(
            f"validation split has {len(data)} tokens; use more text or a larger --data.val-fraction"
        )
    block_size = min(block_size, len(data) - 1)  # a split shorter than the context: one shorter window
    n = (len(data) - 1) // block_size
    x = data[: n * block_size].view(n, block_size)
    y = data[1 : n * block_size + 1].view(n, block_size)
    if max_windows is not None and max_windows < n:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_windows].sort().values
        x, y = x[idx], y[idx]
    return x, y
