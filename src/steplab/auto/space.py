"""What `steplab auto` chooses among: the model template, the shapes, tokenizers, optimizers.

The architecture is not searched: it is the `default` preset's (RoPE, RMSNorm, ReLU² MLP,
no biases, tied embeddings), which beat the reference GPT-2 block on Shakespeare, prose
and source code (docs/results.md). What `auto` decides is what the budget and the corpus
change: the tokenizer, the optimizer and its learning rate, the model's size and shape, the
batch, the schedule's length.

Shapes grow in width at a fixed depth and head count (the head size grows), so μP
transfers a learning rate found at the smallest width to all of them; other depths are
priced at the chosen size and taken when they are faster for the same parameters.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from steplab.config import DataConfig, RunConfig
from steplab.presets import default

WIDTHS = (64, 96, 128, 192, 256, 384, 512, 768, 1024)
DEPTH, HEADS = 4, 4
BLOCK_SIZE = 128
BATCH = 16  # sequences per step of every proxy; the batch decision may change the final one
MIN_STEPS = 30  # a proxy shorter than this cannot tell candidates apart: the stage falls back
OPTIMIZERS = ("adamw", "muon")  # always compared; "lion" joins when the budget allows
EXTRA_OPTIMIZERS = ("lion",)


def template(data: DataConfig, *, device: str = "auto", seed: int = 1337) -> RunConfig:
    """The config every proxy and the final run start from."""
    cfg = default()
    cfg.preset = "auto"
    cfg.data = copy.deepcopy(data)
    cfg.train.device, cfg.train.seed = device, seed
    cfg.train.progress, cfg.train.tensorboard = False, False
    cfg.train.batch_size, cfg.train.grad_accum = BATCH, 1
    cfg.model.block_size = BLOCK_SIZE
    return at_width(cfg, WIDTHS[0])


def at_width(cfg: RunConfig, width: int, depth: int = DEPTH) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.model.n_embd, c.model.n_layer, c.model.n_head, c.model.n_kv_head = width, depth, HEADS, None
    return c


def shape_name(width: int, depth: int = DEPTH) -> str:
    return f"w{width}-d{depth}"


@dataclass(frozen=True)
class TokenizerChoice:
    name: str
    kind: str
    vocab_size: int  # BPE only; ignored by char and byte


def tokenizer_candidates(characters: int, alphabet: int) -> list[TokenizerChoice]:
    """char always; byte when the alphabet is large (many scripts: char's table grows, bytes do
    not); BPE when the corpus is big enough to learn merges from (its vocabulary grows with the
    corpus: a large vocabulary on a small corpus leaves most rows untrained)."""
    out = [TokenizerChoice("char", "char", 0)]
    if alphabet > 512:
        out.append(TokenizerChoice("byte", "byte", 0))
    if characters >= 200_000:
        out.append(TokenizerChoice("bpe-1024", "bpe", 1024))
    if characters >= 5_000_000:
        out.append(TokenizerChoice("bpe-4096", "bpe", 4096))
    return out
