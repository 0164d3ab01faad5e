"""Tokenizers round-trip exactly: char on its alphabet, byte and BPE on any UTF-8 text."""

from __future__ import annotations

import pytest

from steplab.config import TokenizerConfig
from steplab.data.tokenizer import StreamDecoder, from_json, train_tokenizer
from steplab.errors import DataError

CORPUS = ["Hello, world! naïve café — 東京 🎉\n", "def f(x):\n    return x ** 2  # ünïcödé\n"] * 20
ODD = "Zebra ΩΣ ß 🚀🚀 \t tabs\r\nand \u200b zero-width, \x00 nul, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_round_trip_on_training_text(kind: str) -> None:
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind=kind, vocab_size=300))
    for text in CORPUS:
        assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize("kind", ["byte", "bpe"])
def test_round_trip_on_unseen_text(kind: str) -> None:
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind=kind, vocab_size=300))
    assert tok.decode(tok.encode(ODD)) == ODD
    assert max(tok.encode(ODD)) < tok.vocab_size


def test_bpe_compresses_and_serializes() -> None:
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind="bpe", vocab_size=300))
    text = CORPUS[0]
    assert len(tok.encode(text)) < len(text.encode("utf-8"))
    again = from_json(tok.to_json())
    assert again.encode(text) == tok.encode(text)
    assert again.vocab_size == tok.vocab_size


def test_char_rejects_unknown_characters_clearly() -> None:
    tok = train_tokenizer(["abc"], TokenizerConfig(kind="char"))
    assert tok.vocab_size == 3
    with pytest.raises(DataError, match="not in this char tokenizer's alphabet"):
        tok.encode("abz")


def test_stream_decoder_never_splits_a_character() -> None:
    tok = train_tokenizer([], TokenizerConfig(kind="byte"))
    dec = StreamDecoder(tok)
    pieces = [dec.push(b) for b in "é🎉x".encode()]
    assert "".join(pieces) == "é🎉x"
    assert all("\ufffd" not in p for p in pieces)
