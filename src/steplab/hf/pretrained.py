"""Start from a pretrained model: a local transformers directory (``--init-from DIR``).

DIR holds what ``save_pretrained`` writes: ``config.json``, safetensors weights (one file or
shards with an index) and, from the tokenizer, ``tokenizer.json``. `apply` turns the run's
config into that model's (the architecture fields of ``[model]`` from config.json, the
tokenizer from DIR's file); `load_into` replaces a freshly built model's random init with the
pretrained weights, mapped by the rules export writes with (`steplab.hf.weights`).

Only local directories: a hub name gets the "steplab never downloads" error. Only
safetensors: a ``pytorch_model.bin`` is a pickle that can run code when loaded. The weights
are upcast to float32 (the training master weights; autocast still runs bf16 where it would).
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from steplab.config import ModelConfig, RunConfig
from steplab.errors import CheckpointError, SteplabError
from steplab.hf.families import HF_EXTRA, Family, PretrainedError, model_fields
from steplab.hf.weights import expected_keys, from_hf

# The `ModelConfig` fields an import sets; the others (block_size within the pretrained
# context, dropout, attention kernel) stay the run's own.
ARCH_FIELDS = (
    "n_layer",
    "n_head",
    "n_kv_head",
    "n_embd",
    "vocab_size",
    "pos",
    "rope_theta",
    "norm",
    "norm_eps",
    "mlp",
    "mlp_width",
    "qk_norm",
    "tie_embeddings",
    "bias",
    "parametrization",
)


@dataclass
class Pretrained:
    path: Path
    family: Family
    fields: dict[str, Any]  # ModelConfig fields
    max_positions: int
    tokenizer: Path | None


def local_dir(where: str) -> Path:
    """The directory `--init-from` names; a name that is not one is refused, never downloaded."""
    p = Path(where).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise PretrainedError(f"--init-from: {where} is a file; pass the directory save_pretrained wrote")
    raise PretrainedError(
        f"--init-from: {where} does not exist; steplab never downloads from a hub — save the model "
        "locally (model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)) and pass DIR"
    )


def read(where: str) -> Pretrained:
    """Read and check DIR's config.json (through transformers, which fills in its defaults)."""
    path = local_dir(where)
    if not (path / "config.json").is_file():
        raise PretrainedError(f"--init-from: {path} has no config.json (not a transformers model directory)")
    try:
        import transformers
    except ImportError:
        raise PretrainedError(f"--init-from {HF_EXTRA}") from None
    try:
        hf = transformers.AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise PretrainedError(f"--init-from: {path}/config.json: {str(e).splitlines()[0][:300]}") from None
    try:
        family, fields, max_positions = model_fields(hf)
    except PretrainedError as e:
        raise PretrainedError(f"--init-from: {path}: {e}") from None
    tok = path / "tokenizer.json"
    return Pretrained(path, family, fields, max_positions, tok if tok.is_file() else None)


def apply(cfg: RunConfig) -> Pretrained:
    """Make `cfg` the pretrained model's: its architecture, its tokenizer, a context no longer than
    its own (`--model.block-size` may shorten it: learned positions are then cropped, as
    nanoGPT's `crop_block_size` does). Idempotent: `build` and the CLI both call it."""
    assert cfg.train.init_from is not None
    p = read(cfg.train.init_from)
    for name in ARCH_FIELDS:
        setattr(cfg.model, name, p.fields[name])
    cfg.model.block_size = min(cfg.model.block_size, p.max_positions)
    if p.tokenizer is None:
        raise PretrainedError(
            f"--init-from: {p.path} has no tokenizer.json (the fast tokenizer file); "
            "save it there with AutoTokenizer.from_pretrained(...).save_pretrained(DIR)"
        )
    cfg.tokenizer.kind, cfg.tokenizer.path = "pretrained", str(p.tokenizer)
    return p


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
    raise PretrainedError(
        f"--init-from: {path} has no model.safetensors"
        + (
            f" (only {', '.join(found[:3])}: pickled weights can run code when loaded; convert them with "
            "model.save_pretrained(DIR, safe_serialization=True))"
            if found
            else ""
        )
    )


def state_dict(where: str, model_cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """DIR's weights under steplab's names, float32, for a model configured as `apply` left it."""
    from safetensors.torch import load_file

    p = read(where)
    hf: dict[str, torch.Tensor] = {}
    for f in weight_files(p.path):
        hf.update(load_file(str(f)))
    hf = _normalise_names(hf, p.family)
    want = expected_keys(model_cfg, p.family)
    missing = sorted(want - set(hf))
    unexpected = sorted(set(hf) - want - {"lm_head.weight"})
    if missing or unexpected:
        raise PretrainedError(
            f"--init-from: {p.path}: the weights do not match its config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return from_hf(model_cfg, p.family, hf)


def _normalise_names(hf: dict[str, torch.Tensor], fam: Family) -> dict[str, torch.Tensor]:
    """Old GPT-2 files name tensors without the ``transformer.`` prefix and keep the causal-mask
    buffers (``attn.bias``, ``attn.masked_bias``); Llama files may keep ``rotary_emb.inv_freq``."""
    if fam.name == "gpt2":
        hf = {
            (k if k.startswith(("transformer.", "lm_head.")) else f"transformer.{k}"): v
            for k, v in hf.items()
            if not k.endswith((".attn.bias", ".attn.masked_bias")) or v.dim() == 1
        }
    return {k: v for k, v in hf.items() if not k.endswith("rotary_emb.inv_freq")}


def load_into(model: nn.Module, where: str) -> None:
    """Replace `model`'s weights with DIR's (every parameter, or an error naming what is missing)."""
    weights = state_dict(where, model.cfg)  # type: ignore[arg-type]
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(weights))
    if missing:  # pragma: no cover - the rules cover every parameter of a config they accept
        raise PretrainedError(f"--init-from {where}: no pretrained value for {missing[:3]}")
    with torch.no_grad():
        for name, t in weights.items():
            params[name].copy_(t)


def fingerprint(where: str) -> str:
    """sha256 over DIR's config.json and weight files: what a small checkpoint's base must still be."""
    path = local_dir(where)
    h = hashlib.sha256((path / "config.json").read_bytes())
    for f in weight_files(path):
        st = f.stat()
        h.update(_file_sha256(str(f), st.st_size, st.st_mtime_ns).encode())
    return h.hexdigest()


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:  # size, mtime: the cache key
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# --- checkpoints of a partly frozen fine-tune: the frozen weights by reference ------------


def base_reference(cfg: RunConfig, model: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint of a partly frozen fine-tune stores instead of its frozen weights
    (``base.json``; `steplab.checkpoint` writes it, `with_base` reads it back)."""
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if not cfg.train.init_from or not frozen:
        return None
    return {
        "init_from": cfg.train.init_from,
        "fingerprint": fingerprint(cfg.train.init_from),
        "trainable": sorted(n for n, p in model.named_parameters() if p.requires_grad),
        "lora_scale": cfg.train.lora_alpha / cfg.train.lora_rank if cfg.train.lora_rank else None,
    }


def with_base(
    path: Path, cfg: RunConfig, weights: dict[str, torch.Tensor], *, whole: bool = True
) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint that stores only what trains, once its base is checked unchanged.

    whole: the model's plain weights, the base's overlaid with the checkpoint's (LoRA adapters
    merged in); otherwise the stored ones alone (to resume a model that holds the base already).
    """
    from steplab.finetune import merge_lora

    base = json.loads((path / "base.json").read_text())
    where = base["init_from"]
    try:
        if fingerprint(where) != base["fingerprint"]:
            raise CheckpointError(
                f"{path}: its base model {where} (--init-from) has changed since this checkpoint was "
                "written; the frozen weights would not be the ones it trained with"
            )
        if not whole:
            return weights
        full = state_dict(where, cfg.model)
    except SteplabError as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"{path} holds only the trainable parameters; their base model cannot be read: {e}"
        ) from None
    if base.get("lora_scale"):
        return merge_lora({**full, **weights}, base["lora_scale"])
    return {**full, **weights}
