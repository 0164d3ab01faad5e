"""The typed config tree: one schema for the CLI, TOML config files and the Python API.

Each section is a `kw_only` dataclass; each field carries a one-line help text and,
where it has one, its valid range. `RunConfig` is the root. The CLI (`steplab.cli`) is
generated from these classes, and values from flags and files are coerced and range-checked
by `set_value` (with `steplab.config.values`); `steplab.config.files` reads and writes them.

Validation names the flag the user typed: ``--optim.lr must be > 0 (got -1)``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from steplab.config.values import check_type, check_value, coerce, did_you_mean, field_type
from steplab.errors import ConfigError


def opt(default: Any, help: str, **meta: Any) -> Any:  # noqa: A002 - mirrors argparse
    """A field with its one-line help and optional bounds (gt, ge, lt, le).

    Config sections and command options (`steplab.cli`) both use it; command options may add
    CLI metadata: ``positional=True`` (also accepted as a flag), ``flag="--name"``,
    ``metavar="RUN"``. ``dataclasses.MISSING`` as the default makes the field required.
    """
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


@dataclass(kw_only=True)
class ModelConfig:
    """The decoder: a GPT-2 or Llama-style transformer chosen by these switches."""

    n_layer: int = opt(4, "number of transformer blocks", ge=1)
    n_head: int = opt(4, "attention heads", ge=1)
    n_kv_head: int | None = opt(None, "key/value heads for grouped-query attention (none: n_head)", ge=1)
    n_embd: int = opt(128, "model width", ge=1)
    block_size: int = opt(64, "context length in tokens", ge=1)
    vocab_size: int = opt(0, "vocabulary size (0: taken from the tokenizer)", ge=0)
    pos: Literal["learned", "rope"] = opt("learned", "position encoding")
    rope_theta: float = opt(10000.0, "RoPE base frequency", gt=0)
    norm: Literal["layernorm", "rmsnorm"] = opt("layernorm", "normalisation layer")
    norm_eps: float = opt(1e-5, "epsilon of the norm layers", gt=0)
    mlp: Literal["gelu", "gelu_tanh", "swiglu", "relu2"] = opt(
        "gelu", "MLP type (gelu_tanh: GPT-2's tanh approximation of GELU)"
    )
    mlp_ratio: float = opt(4.0, "MLP hidden width / model width (swiglu uses 2/3 of it)", gt=0)
    mlp_width: int | None = opt(
        None, "MLP hidden width, overriding mlp_ratio (--init-from sets the pretrained model's)", ge=1
    )
    qk_norm: bool = opt(False, "RMS-normalise queries and keys per head")
    tie_embeddings: bool = opt(True, "share the input embedding and the output head")
    bias: bool = opt(True, "biases in linear and norm layers")
    dropout: float = opt(0.0, "dropout probability", ge=0, lt=1)
    attention: Literal["auto", "sdpa", "matmul"] = opt(
        "auto",
        "attention kernel: sdpa (fused, memory-lean) or matmul (two batched matmuls, faster on CPU "
        "for short contexts); auto picks matmul on CPU up to 256 tokens, sdpa otherwise",
    )
    logit_softcap: float | None = opt(
        None,
        "cap the logits smoothly at +-C: C * tanh(logits / C) (Gemma 2, modded-nanogpt); none: off",
        gt=0,
    )
    unet_skips: bool = opt(
        False, "U-net skips: the input of block L-1-i gets block i's output, times a learned weight"
    )
    value_embeds: int = opt(
        0, "value embeddings: N tables added to the attention values of the first and last N blocks", ge=0
    )
    init_std: float = opt(0.02, "standard deviation of the weight initialisation", gt=0)
    parametrization: Literal["sp", "mup"] = opt("sp", "standard or maximal-update (muP) parametrization")
    mup_base_width: int = opt(128, "base width that muP hyperparameters refer to", ge=1)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self) -> int:
        if self.mlp_width is not None:
            return self.mlp_width
        hidden = self.mlp_ratio * self.n_embd
        if self.mlp == "swiglu":  # three matrices instead of two: keep the parameter count
            hidden = hidden * 2 / 3
        return max(8, int(math.ceil(hidden / 8) * 8)) if hidden >= 8 else max(1, int(hidden))

    def check(self) -> None:
        if self.n_embd % self.n_head:
            raise ConfigError(
                f"--model.n-embd ({self.n_embd}) must be divisible by --model.n-head ({self.n_head})"
            )
        if self.n_head % self.kv_heads:
            raise ConfigError(
                f"--model.n-head ({self.n_head}) must be divisible by --model.n-kv-head ({self.kv_heads})"
            )
        if 2 * self.value_embeds > self.n_layer:
            raise ConfigError(
                f"--model.value-embeds {self.value_embeds}: the first and last N blocks must not overlap "
                f"(at most {self.n_layer // 2} with {self.n_layer} layers)"
            )
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"rope needs an even head dimension (n_embd/n_head = {self.head_dim})")


@dataclass(kw_only=True)
class DataConfig:
    """Where the text comes from and how it is split."""

    path: str | None = opt(
        None,
        "text, .jsonl, .csv or .parquet file, a directory of them, or a dataset saved with "
        "save_to_disk (none: the bundled Tiny Shakespeare)",
    )
    text_column: str = opt(
        "text", "the field (JSONL) or column (CSV, parquet, saved dataset) holding the text"
    )
    workers: int = opt(0, "tokenizer worker processes (0: one per CPU for corpora of 64 MB or more)", ge=0)
    errors: Literal["strict", "replace"] = opt("strict", "what to do with bytes that are not UTF-8")
    val_fraction: float = opt(
        0.1, "fraction of tokens (the end of the corpus) held out for validation", gt=0, lt=1
    )
    redact: bool = opt(False, "scrub e-mails, phone numbers, IPs, card numbers and keys before tokenizing")
    cache_dir: str | None = opt(None, "where token caches live (none: $STEPLAB_CACHE or ~/.cache/steplab)")


@dataclass(kw_only=True)
class TokenizerConfig:
    """How text becomes tokens."""

    kind: Literal["char", "byte", "bpe", "pretrained"] = opt(
        "char",
        "tokenizer: char, byte (UTF-8), bpe (trained locally) or pretrained (a tokenizer.json, "
        "--tokenizer.path); `--tokenizer PATH` is short for the last",
    )
    vocab_size: int = opt(4096, "BPE vocabulary size", ge=257)
    path: str | None = opt(
        None, "pretrained: a Hugging Face tokenizer.json used as is (a local file; never downloaded)"
    )

    def check(self) -> None:
        if self.kind == "pretrained" and not self.path:
            raise ConfigError("--tokenizer.kind pretrained needs --tokenizer.path (a tokenizer.json)")
        if self.path and self.kind != "pretrained":
            raise ConfigError(
                f"--tokenizer.path is for --tokenizer.kind pretrained (got {self.kind}); "
                "pass --tokenizer PATH to use a tokenizer file"
            )


@dataclass(kw_only=True)
class OptimConfig:
    """The optimizer and its parameter groups."""

    name: str = opt("adamw", "optimizer name (see `steplab optimizers`)")
    lr: float | Literal["auto"] = opt(
        1e-3, "peak learning rate, or 'auto' to run the LR range test first", gt=0
    )
    weight_decay: float = opt(0.1, "decoupled weight decay on matrices", ge=0)
    beta1: float = opt(0.9, "first-moment decay (Adam family, Lion)", ge=0, lt=1)
    beta2: float = opt(0.99, "second-moment decay (Adam family, Lion, SOAP; RMSprop smoothing)", ge=0, lt=1)
    eps: float = opt(1e-8, "denominator epsilon", ge=0)
    momentum: float = opt(0.9, "momentum (sgd, muon)", ge=0, lt=1)
    nesterov: bool = opt(False, "Nesterov momentum (sgd)")
    grad_clip: float = opt(1.0, "clip the global gradient norm to this (0: off)", ge=0)
    decay_embeddings: bool = opt(False, "apply weight decay to embeddings too")
    embed_lr_mult: float = opt(1.0, "learning-rate multiplier for embeddings", gt=0)
    head_lr_mult: float = opt(1.0, "learning-rate multiplier for an untied output head", gt=0)


@dataclass(kw_only=True)
class ScheduleConfig:
    """The learning-rate schedule: a pure function of the step and the run's progress."""

    name: str = opt("cosine", "schedule name (constant, cosine, wsd, linear, inv_sqrt)")
    warmup_steps: int = opt(100, "linear warm-up steps", ge=0)
    min_lr_ratio: float = opt(0.1, "final learning rate / peak learning rate", ge=0, le=1)
    decay_fraction: float = opt(0.2, "wsd: fraction of the run spent cooling down", ge=0, le=1)
    cooldown: Literal["linear", "1-sqrt"] = opt("linear", "wsd: shape of the cool-down")


@dataclass(kw_only=True)
class TrainConfig:
    """The step and the loop: batch, budget, precision, logging."""

    batch_size: int = opt(12, "sequences per micro-batch", ge=1)
    grad_accum: int = opt(1, "micro-batches per optimizer step", ge=1)
    max_steps: int | None = opt(2000, "stop after this many optimizer steps", ge=1)
    max_tokens: int | None = opt(None, "stop after this many training tokens", ge=1)
    max_seconds: float | None = opt(None, "stop after this many seconds of training", gt=0)
    target_loss: float | None = opt(
        None, "stop at the first evaluation at or below this validation loss", gt=0
    )
    seed: int = opt(1337, "random seed (model init, batch order, dropout)")
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = opt(
        "auto", "autocast dtype (auto: bf16 on CUDA and on CPUs with AMX or AVX512-BF16, float32 elsewhere)"
    )
    compile: bool = opt(False, "torch.compile the model")
    parallel: Literal["ddp", "fsdp"] = opt("ddp", "how torchrun processes share the work: DDP or FSDP2")
    threads: int | None = opt(None, "CPU threads for torch (none: torch's choice)", ge=1)
    log_every: int = opt(50, "log train metrics every N steps", ge=1)
    progress: bool = opt(True, "show a progress bar (plain lines when not a terminal)")
    tensorboard: bool = opt(True, "also write TensorBoard events (needs the tensorboard extra)")
    tracker: Literal["none", "wandb", "mlflow"] = opt(
        "none", "also log metrics to wandb or MLflow (needs that extra; configured by its env vars)"
    )
    noise_scale_every: int = opt(
        0, "log the gradient noise scale every N steps (0: off; 4 extra forward-backward passes each)", ge=0
    )
    init_from: str | None = opt(
        None,
        "fine-tune a pretrained model: a local transformers directory (config.json, safetensors, "
        "tokenizer.json) whose architecture, weights (no re-initialisation) and tokenizer replace "
        "[model] and [tokenizer]; `--init-from DIR` also starts from the finetune preset unless "
        "--preset is given (AdamW lr 3e-4, 20 warmup steps, cosine, 200 steps; docs/finetune.md)",
    )
    freeze: str | None = opt(
        None,
        "parameters kept fixed: comma-separated name patterns (fnmatch; a module name covers what is "
        "under it), e.g. 'wte,blocks.0.*'",
    )
    lora_rank: int = opt(
        0,
        "LoRA adapters of this rank on every attention and MLP matrix, through peft (the lora extra); "
        "only the adapters train (0: off; needs --init-from)",
        ge=0,
    )
    lora_alpha: int = opt(16, "LoRA scale: an adapter's update is multiplied by alpha / rank", ge=1)

    def check(self) -> None:
        if self.lora_rank and not self.init_from:
            raise ConfigError("--train.lora-rank adapts a pretrained model: pass --init-from DIR as well")


@dataclass(kw_only=True)
class EvalConfig:
    """Validation: when and how much."""

    every: int = opt(500, "evaluate every N steps (0: only at the end)", ge=0)
    max_windows: int | None = opt(
        None, "evaluate a fixed seeded subset of this many windows (none: the whole split)", ge=1
    )
    batch_size: int = opt(256, "windows per evaluation batch", ge=1)
    window: int | None = opt(
        None, "tokens per validation window (none: the context length); fix it to compare runs", ge=1
    )


@dataclass(kw_only=True)
class CheckpointConfig:
    """When to save and how many to keep."""

    every: int = opt(0, "save a checkpoint every N steps (0: only at the end)", ge=0)
    keep_last: int = opt(2, "keep the newest K checkpoints", ge=1)
    keep_best: bool = opt(True, "also keep the checkpoint with the best validation loss")
    format: Literal["full", "sharded"] = opt(
        "full",
        "full: the whole state gathered to rank 0, one model.safetensors; sharded: every torchrun "
        "process writes its own shards (torch.distributed.checkpoint), for models too big to gather",
    )


@dataclass(kw_only=True)
class GuardConfig:
    """Divergence guard: catch a non-finite or spiking step before its update lands (see steplab.loop.guard)."""

    policy: Literal["off", "stop", "skip", "rollback"] = opt(
        "skip",
        "on a bad step: stop, skip its batch, or roll back to the last good checkpoint "
        "(off: no per-step check and no per-step host sync)",
    )
    spike_sigma: float = opt(5.0, "a spike is a loss above the moving mean + this many moving std", gt=0)
    spike_rise: float = opt(0.1, "... and above the moving mean x (1 + this)", ge=0)
    spike_decay: float = opt(0.9, "decay of the moving mean and variance of the loss", gt=0, lt=1)
    spike_warmup: int = opt(20, "accepted steps before loss spikes are checked", ge=1)
    max_attempts: int = opt(5, "give up after this many consecutive skipped steps, or rollbacks", ge=1)
    lr_factor: float = opt(0.5, "rollback: multiply the learning rate by this", gt=0, le=1)
    loss_ceiling: float = opt(
        1.5,
        "flag a step whose loss is above this x ln(vocab size), the loss of a uniform guess, "
        "from the first step on (0: off)",
        ge=0,
    )

    def check(self) -> None:
        if 0 < self.loss_ceiling <= 1:
            raise ConfigError(
                f"--guard.loss-ceiling must be 0 (off) or above 1 (got {self.loss_ceiling:g}): "
                "a fresh model's loss is about ln(vocab size) already"
            )


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "tokenizer": TokenizerConfig,
    "optim": OptimConfig,
    "schedule": ScheduleConfig,
    "train": TrainConfig,
    "eval": EvalConfig,
    "checkpoint": CheckpointConfig,
    "guard": GuardConfig,
}

# `--data corpus/` and `--tokenizer bpe` are short for the section's main field; `--tokenizer`
# with anything but a kind's name is a tokenizer file (`--tokenizer.kind pretrained --tokenizer.path`).
SHORTHANDS: dict[str, str] = {"data": "path", "tokenizer": "kind", "optim": "name", "schedule": "name"}


@dataclass(kw_only=True)
class RunConfig:
    """The root of the config tree: everything a run depends on."""

    preset: str = opt("none", "the preset this config started from (none: the dataclass defaults)")
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)

    def validate(self) -> RunConfig:
        """Check every field's type and range; raise `ConfigError` naming the flag.

        Names looked up in a registry (optimizer, schedule) are checked by the registry
        itself when it is used (`steplab.loop.session.check` runs every check up front).
        """
        for name in SECTIONS:
            section = getattr(self, name)
            for f in dataclasses.fields(section):
                where = flag(name, f.name)
                value = check_type(field_type(type(section), f.name), getattr(section, f.name), where)
                setattr(section, f.name, value)  # 8.0 set where an int is expected becomes 8
                check_value(f, value, where)
            if hasattr(section, "check"):
                section.check()
        if self.eval.window is not None and self.eval.window > self.model.block_size:
            raise ConfigError(
                f"--eval.window ({self.eval.window}) must be <= --model.block-size ({self.model.block_size})"
            )
        t = self.train
        if t.max_steps is None and t.max_tokens is None and t.max_seconds is None:
            raise ConfigError("no budget: set --train.max-steps, --train.max-tokens or --train.max-seconds")
        return self


def flag(section: str | None, name: str) -> str:
    return f"--{section + '.' if section else ''}{name.replace('_', '-')}"


def set_value(cfg: RunConfig, dotted: str, value: Any, where: str | None = None) -> None:
    """Set `section.field` (hyphens or underscores) on `cfg`, coercing `value` to the field's type."""
    section, _, name = dotted.replace("-", "_").partition(".")
    where = where or flag(section if name else None, name or section)
    if not name:
        kinds = typing.get_args(field_type(TokenizerConfig, "kind"))
        if section == "tokenizer" and isinstance(value, str) and value not in kinds:
            if not (value.endswith(".json") or "/" in value or Path(value).exists()):
                raise ConfigError(
                    f"{where} must be one of {', '.join(kinds)} or a tokenizer.json path (got {value!r})"
                )
            cfg.tokenizer.kind, cfg.tokenizer.path = "pretrained", value  # `--tokenizer PATH`
            return
        if section in SHORTHANDS:
            section, name = section, SHORTHANDS[section]
        elif section in {f.name for f in dataclasses.fields(RunConfig)} and section not in SECTIONS:
            setattr(cfg, section, coerce(field_type(RunConfig, section), value, where))
            return
        else:
            raise ConfigError(f"unknown setting {where} (sections: {', '.join(SECTIONS)})")
    if section not in SECTIONS:
        hint = did_you_mean(section, list(SECTIONS))
        raise ConfigError(f"unknown section in {where} ({hint}valid: {', '.join(SECTIONS)})")
    cls = SECTIONS[section]
    names = [f.name for f in dataclasses.fields(cls)]
    if name not in names:
        hint = did_you_mean(name, names, f"did you mean {section}.{{}}? ")
        raise ConfigError(
            f"unknown setting {where} ({hint}valid in {section}: "
            f"{', '.join(n.replace('_', '-') for n in names)})"
        )
    setattr(getattr(cfg, section), name, coerce(field_type(cls, name), value, where))


# A run's budget: it stops at the first limit reached. A layer of settings (a config file, the
# flags) that names any of these replaces the budget below it (the preset's, or the file's):
# `--train.max-seconds 60` trains for 60 seconds, not "60 seconds or the preset's 600 steps".
BUDGET = ("max_steps", "max_tokens", "max_seconds")


def clear_budget(cfg: RunConfig) -> None:
    for name in BUDGET:
        setattr(cfg.train, name, None)
