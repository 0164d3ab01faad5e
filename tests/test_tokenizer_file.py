"""A user's own tokenizer.json (`--tokenizer PATH`): used as is, cached by content, uint32 above 65,536."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import numpy as np
import pytest
import torch

from steplab.cli.main import main
from steplab.config import DataConfig, RunConfig, TokenizerConfig, set_value
from steplab.data.batches import BatchSampler, val_windows
from steplab.data.cache import prepare
from steplab.data.tokenizer import PretrainedTokenizer, from_json
from steplab.errors import ConfigError, DataError

BIG_VOCAB = 70_000  # above uint16's 65,536 ids
SMALL_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 10


def word_tokenizer(path: Path, text: str, *, offset: int = BIG_VOCAB - 1000) -> Path:
    """A WordLevel tokenizer whose words sit at ids >= `offset` (fillers below): the ids need uint32."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = sorted(set(text.replace("\n", " \n ").split(" ")) - {""})
    vocab = {f"<filler{i}>": i for i in range(offset)}
    vocab["[UNK]"] = offset
    vocab.update({w: offset + 1 + i for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tok.save(str(path))
    return path


def byte_level_tokenizer(path: Path, text: str) -> Path:
    """A GPT-2-style byte-level BPE trained elsewhere (here: by HF tokenizers directly), with a special token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tok.train_from_iterator([text], trainer=trainer)
    tok.save(str(path))
    return path


def test_the_shorthand_takes_a_path() -> None:
    cfg = RunConfig()
    set_value(cfg, "tokenizer", "some/tokenizer.json")
    assert (cfg.tokenizer.kind, cfg.tokenizer.path) == ("pretrained", "some/tokenizer.json")
    set_value(cfg, "tokenizer", "bpe")
    assert cfg.tokenizer.kind == "bpe"
    with pytest.raises(ConfigError, match="--tokenizer.path is for --tokenizer.kind pretrained"):
        cfg.validate()
    with pytest.raises(ConfigError, match="needs --tokenizer.path"):
        TokenizerConfig(kind="pretrained").check()


def test_a_byte_level_file_is_used_as_is(tmp_path: Path, small_corpus: Path) -> None:
    path = byte_level_tokenizer(tmp_path / "tok.json", SMALL_TEXT)
    cfg = TokenizerConfig(kind="pretrained", path=str(path))
    data = prepare(DataConfig(path=str(small_corpus)), cfg)
    assert isinstance(data.tokenizer, PretrainedTokenizer)
    assert data.meta["dtype"] == "uint16"
    text = small_corpus.read_text()
    ref = PretrainedTokenizer.from_file(str(path))
    assert list(np.concatenate([data.train, data.val])) == ref.encode(text)
    assert data.meta["val_bytes"] == len(ref.decode(list(data.val)).encode())  # byte-level: exact
    again = from_json(json.loads(json.dumps(data.tokenizer.to_json())))
    assert again.to_json() == data.tokenizer.to_json() and again.kind == "pretrained"


def test_a_large_vocabulary_is_stored_as_uint32(tmp_path: Path, small_corpus: Path) -> None:
    path = word_tokenizer(tmp_path / "words.json", small_corpus.read_text())
    data = prepare(DataConfig(path=str(small_corpus)), TokenizerConfig(kind="pretrained", path=str(path)))
    assert data.tokenizer.vocab_size > 1 << 16
    assert data.meta["dtype"] == "uint32" and data.train.dtype == np.uint32
    assert data.train.max() >= 1 << 16  # ids that uint16 would have wrapped
    assert data.tokenizer.decode(list(data.train[:12])).split() == small_corpus.read_text().split()[:12]
    sampler = BatchSampler(data.train, 16, 4, seed=0, device=torch.device("cpu"))
    x, y = sampler.batch_at(3)
    assert x.dtype == torch.int64 and int(x.max()) >= 1 << 16
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_the_cache_is_keyed_by_the_file_content(tmp_path: Path, small_corpus: Path) -> None:
    path = byte_level_tokenizer(tmp_path / "tok.json", SMALL_TEXT)
    cfg = TokenizerConfig(kind="pretrained", path=str(path))
    first = prepare(DataConfig(path=str(small_corpus)), cfg)
    byte_level_tokenizer(path, SMALL_TEXT[:200])  # the same name, another tokenizer
    second = prepare(DataConfig(path=str(small_corpus)), cfg)
    assert second.tokenizer.to_json() != first.tokenizer.to_json()
    assert second.meta["tokens"] != first.meta["tokens"]


def test_missing_or_bad_files_are_one_clear_error(tmp_path: Path, small_corpus: Path) -> None:
    data = DataConfig(path=str(small_corpus))
    with pytest.raises(DataError, match="never downloads"):
        prepare(data, TokenizerConfig(kind="pretrained", path="openai-community/gpt2"))
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(DataError, match="not a Hugging Face tokenizer.json"):
        prepare(data, TokenizerConfig(kind="pretrained", path=str(tmp_path / "bad.json")))


def test_sampling_reads_only_its_windows(tmp_path: Path) -> None:
    """A 400 MB uint32 memmap: the sampler and a val subset cost no memory in its size."""
    n = 100_000_000
    path = tmp_path / "tokens.bin"
    with open(path, "wb") as fh:
        fh.truncate(n * 4)  # sparse: nothing is written
    tokens = np.memmap(path, dtype=np.uint32, mode="r", shape=(n,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    sampler = BatchSampler(tokens, 128, 32, seed=0, device=torch.device("cpu"))
    for i in range(20):
        sampler.batch_at(i)
    x, _ = val_windows(tokens, 128, 64, seed=0)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert x.shape == (64, 128)
    assert grown_mb < 50  # converting the split to int64 would take 800 MB


def test_train_with_a_tokenizer_file(
    tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = word_tokenizer(tmp_path / "words.json", small_corpus.read_text())
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny", "--data", str(small_corpus), "--tokenizer", str(path), "--quiet"]
    assert main([*args, "--run-dir", str(run), "--train.max-steps", "3", "--train.tensorboard", "false"]) == 0
    saved = json.loads((run / "tokenizer.json").read_text())
    assert saved["kind"] == "pretrained"
    capsys.readouterr()
    assert (
        main(["sample", "--run", str(run), "--prompt", "First", "--max-new-tokens", "3", "--seed", "0"]) == 0
    )
    assert capsys.readouterr().out.startswith("First")  # the run is self-contained: sample needs no file
