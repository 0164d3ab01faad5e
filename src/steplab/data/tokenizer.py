"""Tokenizers: char, byte (UTF-8), BPE (trained locally with Hugging Face `tokenizers`) and a
pretrained one read from a user's ``tokenizer.json`` (GPT-2's, Llama's, an `--init-from` model's).

All four share one small interface (`encode`, `decode`, `vocab_size`, `to_json`) and are
saved with the run as `tokenizer.json`, so `sample` and `eval` never depend on the corpus
or on the file a pretrained tokenizer came from. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from steplab.config import TokenizerConfig
from steplab.errors import CheckpointError, DataError


class Tokenizer(Protocol):
    kind: str

    @property
    def vocab_size(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def to_json(self) -> dict[str, Any]: ...


class CharTokenizer:
    """One token per character of the training corpus's alphabet (sorted)."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def train(cls, texts: Iterable[str], cfg: TokenizerConfig) -> CharTokenizer:
        alphabet: set[str] = set()
        for t in texts:
            alphabet.update(t)
        return cls(alphabet)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise DataError(
                f"character {e.args[0]!r} is not in this char tokenizer's alphabet "
                "(use --tokenizer byte or bpe for open text)"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "char", "chars": "".join(self.chars)}


class ByteTokenizer:
    """The 256 UTF-8 byte values: any text, no training, four bytes at most per character."""

    kind = "byte"

    @classmethod
    def train(cls, texts: Iterable[str], cfg: TokenizerConfig) -> ByteTokenizer:
        return cls()

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        return {"kind": "byte"}


class BPETokenizer:
    """Byte-level BPE (GPT-2 style) trained on the corpus: exact round trip on any UTF-8 text."""

    kind = "bpe"

    def __init__(self, tok: Any):
        self.tok = tok

    @classmethod
    def train(cls, texts: Iterable[str], cfg: TokenizerConfig) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
            special_tokens=[],
        )
        tok.train_from_iterator(_chunks(texts), trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text; `encode_batch_fast` (tokenizers >= 0.21) skips the character
        offsets we never use: the same ids, in about half the time (benchmarks/tokenization.py)."""
        encode = getattr(self.tok, "encode_batch_fast", None) or self.tok.encode_batch
        return [e.ids for e in encode(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return str(self.tok.decode(list(ids), skip_special_tokens=False))

    def to_json(self) -> dict[str, Any]:
        return {"kind": "bpe", "hf": json.loads(self.tok.to_str())}


class PretrainedTokenizer(BPETokenizer):
    """A Hugging Face ``tokenizer.json`` made elsewhere, used as is: never trained, never downloaded.

    Text is encoded without the special tokens a post-processor would add (a BOS per piece
    of a streamed corpus would be wrong); steplab joins documents with a newline, as for its
    own tokenizers. Any model the file holds (BPE, WordPiece, Unigram, byte fallback) works.
    """

    kind = "pretrained"

    @classmethod
    def train(cls, texts: Iterable[str], cfg: TokenizerConfig) -> PretrainedTokenizer:
        return cls.from_file(cfg.path or "")

    @classmethod
    def from_file(cls, path: str) -> PretrainedTokenizer:
        from pathlib import Path

        from tokenizers import Tokenizer as HFTokenizer

        p = Path(path)
        if not p.is_file():
            hint = (
                "; steplab never downloads: save the tokenizer locally (tokenizer.save(PATH) or "
                "AutoTokenizer.save_pretrained(DIR)) and pass the tokenizer.json"
                if not p.exists()
                else ""
            )
            raise DataError(f"--tokenizer.path: {path} is not a file{hint}")
        try:
            return cls(HFTokenizer.from_file(str(p)))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise DataError(f"--tokenizer.path: {path} is not a Hugging Face tokenizer.json ({e})") from None

    @property
    def byte_level(self) -> bool:
        """Whether each token's string is its bytes, one symbol per byte (GPT-2 style byte-level BPE)."""
        return type(self.tok.decoder).__name__ == "ByteLevel"

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "pretrained", "hf": json.loads(self.tok.to_str())}


def _chunks(texts: Iterable[str], size: int = 1 << 16) -> Iterator[str]:
    """Feed long documents to the BPE trainer in pieces (line boundaries kept)."""
    for t in texts:
        start = 0
        while start < len(t):
            end = t.find("\n", start + size)
            end = len(t) if end < 0 else end + 1
            yield t[start:end]
            start = end


TOKENIZERS: dict[str, Any] = {
    "char": CharTokenizer,
    "byte": ByteTokenizer,
    "bpe": BPETokenizer,
    "pretrained": PretrainedTokenizer,
}


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
    if cfg.kind not in TOKENIZERS:
        raise DataError(f"unknown tokenizer {cfg.kind!r} (valid: {', '.join(TOKENIZERS)})")
    tok: Tokenizer = TOKENIZERS[cfg.kind].train(texts, cfg)
    return tok


def from_json(data: dict[str, Any]) -> Tokenizer:
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["chars"])
    if kind == "byte":
        return ByteTokenizer()
    if kind in ("bpe", "pretrained"):
        from tokenizers import Tokenizer as HFTokenizer

        cls = BPETokenizer if kind == "bpe" else PretrainedTokenizer
        return cls(HFTokenizer.from_str(json.dumps(data["hf"])))
    raise CheckpointError(f"unknown tokenizer kind {kind!r} in tokenizer.json")


class StreamDecoder:
    """Decode tokens one at a time without splitting a multi-byte character."""

    def __init__(self, tok: Tokenizer):
        self.tok, self.emitted = tok, ""
        self.ids: list[int] = []

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for the next token
            return ""
        new = text[len(self.emitted) :]
        self.emitted = text
        return new
