"""Presets: plain Python functions that return a `RunConfig`; flags override them.

`steplab train --preset NAME` starts from one of these; `steplab presets` lists them.
"""

from __future__ import annotations

from collections.abc import Callable

from steplab.config import RunConfig
from steplab.errors import ConfigError


def shakespeare_char() -> RunConfig:
    """The reference's baby GPT (4 layers, 4 heads, width 128, context 64, batch 12), AdamW 1e-3, cosine."""
    cfg = RunConfig(preset="shakespeare_char")
    cfg.train.max_steps = 2000
    cfg.eval.every = 250
    return cfg


def default() -> RunConfig:
    """`make run`: char-level Tiny Shakespeare to val loss < 1.70 in about two minutes on 2 CPU cores."""
    cfg = RunConfig(preset="default")
    m = cfg.model
    m.n_layer, m.n_head, m.n_embd, m.block_size = 4, 4, 128, 128
    m.pos, m.norm, m.mlp, m.bias = "rope", "rmsnorm", "relu2", False
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.beta2 = 3e-3, 0.1, 0.99
    cfg.schedule.name, cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio = "wsd", 50, 0.0
    cfg.schedule.decay_fraction = 0.3
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.log_every = 32, 600, 25
    cfg.eval.every = 200
    return cfg


def speedrun_cpu() -> RunConfig:
    """CPU speedrun: whole-split val loss <= 1.91 (windows of 64) on char-level Tiny Shakespeare, fast.

    The default architecture (RoPE, RMSNorm, ReLU², no biases) plus QK-norm, at context 64
    and 24 sequences a step, trained by Muon (AdamW for embeddings, head and vectors) with a
    short WSD schedule: small batches and Muon learn more per token at this scale, QK-norm
    lets 165 steps do what took 250, and the cool-down does the rest. bf16 autocast on CPUs
    with native bf16 GEMMs (the default there). Stops at the first evaluation at or below 1.91
    (docs/speedrun.md).
    """
    cfg = default()
    cfg.preset = "speedrun_cpu"
    cfg.model.block_size, cfg.model.qk_norm = 64, True
    cfg.optim.name, cfg.optim.lr = "muon", 1.5e-2
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.log_every = 24, 165, 50
    cfg.train.target_loss = 1.91
    cfg.schedule.warmup_steps, cfg.schedule.decay_fraction = 30, 0.3
    cfg.eval.every, cfg.eval.window = 50, 64
    cfg.checkpoint.keep_best = False  # no checkpoint writes between evaluations
    return cfg


def seed_adamw() -> RunConfig:
    """The project seed's own setting: the reference model with AdamW lr 1e-3, eps 1e-8, wd 0.01, betas (0.9, 0.999)."""
    cfg = shakespeare_char()
    cfg.preset = "seed_adamw"
    cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay = 1e-3, 1e-8, 0.01
    cfg.optim.beta1, cfg.optim.beta2 = 0.9, 0.999
    return cfg


def llama_char() -> RunConfig:
    """A Llama-style variant of the reference model: RoPE, RMSNorm, SwiGLU, no biases, untied head."""
    cfg = shakespeare_char()
    cfg.preset = "llama_char"
    m = cfg.model
    m.pos, m.norm, m.mlp, m.bias, m.tie_embeddings = "rope", "rmsnorm", "swiglu", False, False
    return cfg


def tiny() -> RunConfig:
    """A seconds-long smoke test: 2 layers, width 32, context 32."""
    cfg = RunConfig(preset="tiny")
    m = cfg.model
    m.n_layer, m.n_head, m.n_embd, m.block_size = 2, 2, 32, 32
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.log_every = 8, 50, 10
    cfg.eval.every, cfg.eval.max_windows = 25, 64
    cfg.schedule.warmup_steps = 5
    return cfg


def gpt2_small() -> RunConfig:
    """GPT-2 small (124M) on BPE, bf16 on a GPU: the size for MFU measurements."""
    cfg = RunConfig(preset="gpt2_small")
    m = cfg.model
    m.n_layer, m.n_head, m.n_embd, m.block_size = 12, 12, 768, 1024
    cfg.tokenizer.kind, cfg.tokenizer.vocab_size = "bpe", 8192
    cfg.optim.lr, cfg.optim.beta2, cfg.optim.weight_decay = 6e-4, 0.95, 0.1
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.log_every = 16, 1000, 10
    cfg.schedule.warmup_steps = 100
    cfg.eval.every, cfg.eval.max_windows = 250, 256
    return cfg


def finetune() -> RunConfig:
    """Fine-tuning a pretrained model (`--init-from DIR` starts here unless --preset is given): AdamW 3e-4, 20 warmup steps, cosine, 200 steps.

    The model and tokenizer sections come from DIR; the context is DIR's, at most 1024 tokens.
    The learning rate is a tenth of training from scratch and the warmup short: the weights are
    already good, and large early updates undo what pretraining learned. A cautious default,
    not a tuned one: docs/finetune.md measures lr-find and a learning-rate grid on a small model.
    """
    cfg = RunConfig(preset="finetune")
    cfg.model.block_size = 1024
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.beta2 = 3e-4, 0.0, 0.95
    cfg.schedule.name, cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio = "cosine", 20, 0.1
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.log_every = 8, 200, 10
    cfg.eval.every, cfg.eval.max_windows = 50, 256
    return cfg


def bpe_small() -> RunConfig:
    """A BPE model people train on a CPU box: 8 layers, width 512, context 256, BPE 8192 (29M).

    The default architecture (RoPE, RMSNorm, ReLU², no biases, tied head) at a size where
    the step's matrix multiplies are large enough to keep the cores busy (docs/scale.md has
    its FLOPs utilisation and profile). AdamW: Muon's Newton-Schulz iterations would add a
    third to the step's FLOPs at this width. Meant for your own corpus (``--data``); on the
    bundled 1 MB Tiny Shakespeare it overfits within a few hundred steps.
    """
    cfg = RunConfig(preset="bpe_small")
    m = cfg.model
    m.n_layer, m.n_head, m.n_embd, m.block_size = 8, 8, 512, 256
    m.pos, m.norm, m.mlp, m.bias = "rope", "rmsnorm", "relu2", False
    cfg.tokenizer.kind, cfg.tokenizer.vocab_size = "bpe", 8192
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.beta2 = 1e-3, 0.1, 0.95
    cfg.schedule.name, cfg.schedule.warmup_steps, cfg.schedule.decay_fraction = "wsd", 100, 0.2
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.log_every = 16, 2000, 10
    cfg.eval.every, cfg.eval.max_windows = 250, 128
    return cfg


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "default": default,
    "shakespeare_char": shakespeare_char,
    "speedrun_cpu": speedrun_cpu,
    "seed_adamw": seed_adamw,
    "llama_char": llama_char,
    "tiny": tiny,
    "gpt2_small": gpt2_small,
    "finetune": finetune,
    "bpe_small": bpe_small,
}


def get_preset(name: str) -> RunConfig:
    if name not in PRESETS:
        raise ConfigError(f"--preset: unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    return PRESETS[name]()
