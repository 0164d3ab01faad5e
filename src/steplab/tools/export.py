"""Export a run's checkpoint for use outside steplab.

``--format hf`` writes a directory that ``transformers.AutoModelForCausalLM.from_pretrained``
and ``AutoTokenizer.from_pretrained`` load without custom code, as the transformers class
that computes exactly what the model does (`steplab.hf.families`: Llama, Qwen3, Arcee,
Apertus or GPT-2), with the tensors mapped by the rules `--init-from` reads back
(`steplab.hf.weights`). char, byte and BPE tokenizers become one fast tokenizer
(``tokenizer.json``) each; a pretrained one is written back as it came.

Anything without a faithful equivalent is an `ExportError` that names the blocking setting.
Before the directory lands at ``--out``, it is reloaded with transformers and its logits
compared with steplab's; an unfaithful export is an error and writes nothing.

``--format safetensors`` writes the plain state dict, the model config as JSON and
steplab's own tokenizer: no transformers needed, `load_safetensors` reads it back.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from steplab.config import ModelConfig
from steplab.data.tokenizer import BPETokenizer, ByteTokenizer, CharTokenizer, Tokenizer, from_json
from steplab.hf.families import FAMILIES, HF_EXTRA, ExportError, family_for, hf_config
from steplab.hf.weights import to_hf
from steplab.model import GPT

__all__ = ["FAMILIES", "ExportError", "export_hf", "export_safetensors", "family_for", "load_safetensors"]

EXPORT_MARKER = "steplab-export.json"  # written last into every export: the files steplab wrote


# --- tokenizers ----------------------------------------------------------------------------


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in for each byte: the symbols of a byte-level vocabulary."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def hf_tokenizer(tok: Tokenizer) -> Any:
    """A `tokenizers.Tokenizer` that encodes and decodes exactly as `tok` does.

    byte: a byte-level BPE with the 256 byte symbols as id 0..255 and no merges.
    char: a BPE whose vocabulary is the alphabet, no merges and no pre-tokenizer, so every
    character is one token; characters outside the alphabet are dropped, where steplab raises.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    if isinstance(tok, BPETokenizer):
        return HFTokenizer.from_str(tok.tok.to_str())
    if isinstance(tok, ByteTokenizer):
        vocab = {s: b for b, s in bytes_to_unicode().items()}
        t = HFTokenizer(models.BPE(vocab=vocab, merges=[]))
        t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        t.decoder = decoders.ByteLevel()
        return t
    if isinstance(tok, CharTokenizer):
        t = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(tok.chars)}, merges=[]))
        t.decoder = decoders.Fuse()
        return t
    raise ExportError(f"--tokenizer.kind {tok.kind}: no fast-tokenizer equivalent")


def check_tokenizer(tok: Tokenizer, fast: Any, sample: str) -> None:
    """Refuse to write a tokenizer that disagrees with steplab's on `sample`."""
    ours = tok.encode(sample)
    theirs = fast.encode(sample, add_special_tokens=False)
    if list(theirs) != ours:
        raise ExportError(f"the exported {tok.kind} tokenizer encodes differently from steplab's")
    if fast.decode(ours, skip_special_tokens=False, clean_up_tokenization_spaces=False) != tok.decode(ours):
        raise ExportError(f"the exported {tok.kind} tokenizer decodes differently from steplab's")


# --- the exports ---------------------------------------------------------------------------


@dataclasses.dataclass
class Exported:
    out: Path
    family: str  # a key of FAMILIES (llama, qwen3, arcee, apertus, gpt2) or steplab
    max_abs_diff: float | None  # transformers' logits vs steplab's on a random batch


def build_model(cfg: ModelConfig, weights: dict[str, torch.Tensor]) -> GPT:
    from steplab.checkpoint import load_weights

    model = GPT(cfg)
    load_weights(model, weights, Path("<export>"))
    return model.eval()


def export_hf(
    model: GPT,
    tok: Tokenizer,
    out: Path,
    *,
    sample: str = "",
    provenance: dict[str, Any] | None = None,
    tolerance: float = 1e-3,
    overwrite: bool = False,
) -> Exported:
    """Write `model` and `tok` as a transformers directory, reloaded and checked before it lands.

    The reload's logits on a random batch must be within `tolerance` of steplab's.
    """
    cfg = model.cfg
    fam = family_for(cfg)
    try:
        import transformers
    except ImportError:
        raise ExportError(f"the hf export {HF_EXTRA}") from None
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf_tokenizer(tok), clean_up_tokenization_spaces=False
    )
    check_tokenizer(tok, fast, sample or _tokenizer_sample(tok))
    fast.model_max_length = cfg.block_size  # transformers warns past it (positions end there)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(cfg, fam))
    if type(hf).__name__ != fam.cls:  # pragma: no cover - a transformers that maps model types elsewhere
        raise ExportError(
            f"transformers {transformers.__version__} builds {type(hf).__name__}, not {fam.cls}"
        )
    missing, unexpected = hf.load_state_dict(to_hf(cfg, fam, sd), strict=False)
    missing = [k for k in missing if not (cfg.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:  # a transformers version whose layout differs from this mapping
        raise ExportError(
            f"transformers {transformers.__version__} {fam.cls} does not match the mapping "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    if cfg.tie_embeddings:
        hf.tie_weights()
    diff = float("nan")

    def write(tmp: Path) -> None:
        nonlocal diff
        hf.save_pretrained(tmp)
        fast.save_pretrained(tmp)
        (tmp / "steplab.json").write_text(json.dumps(_provenance(cfg, provenance), indent=1))
        diff = compare_logits(model, tmp)  # checked before the directory lands at `out`
        if not diff <= tolerance:
            raise ExportError(
                f"transformers' logits differ from steplab's by {diff:.2e} (> {tolerance:g}) after "
                f"reloading the export; nothing was written to {out} (please report this)"
            )

    _write_atomically(out, write, overwrite=overwrite, provenance=provenance)
    return Exported(out=out, family=fam.name, max_abs_diff=diff)


def compare_logits(model: GPT, out: Path, *, batch: int = 2, seed: int = 0) -> float:
    """Largest |logit difference| between steplab and transformers' reload of `out` on random tokens."""
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()  # float32, as saved
    g = torch.Generator().manual_seed(seed)
    T = min(model.cfg.block_size, 64)
    x = torch.randint(model.cfg.vocab_size, (batch, T), generator=g)
    with torch.no_grad():
        ours, _ = model(x)
        theirs = hf(input_ids=x).logits
    return float((ours.float() - theirs.float()).abs().max())


def export_safetensors(
    model: GPT,
    tok: Tokenizer,
    out: Path,
    *,
    provenance: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Exported:
    """The plain state dict (a tied head stored once, as wte.weight), config.json, tokenizer.json."""
    from steplab.checkpoint import model_state

    def write(tmp: Path) -> None:
        save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(_provenance(model.cfg, provenance), indent=1))
        (tmp / "tokenizer.json").write_text(json.dumps(tok.to_json()))

    _write_atomically(out, write, overwrite=overwrite, provenance=provenance)
    return Exported(out=out, family="steplab", max_abs_diff=None)


def load_safetensors(path: Path) -> tuple[GPT, Tokenizer]:
    """Read back an ``--format safetensors`` export: the model (eval mode, CPU) and its tokenizer."""
    path = Path(path)
    try:
        meta = json.loads((path / "config.json").read_text())
        cfg = ModelConfig(**meta["model"])
        tok = from_json(json.loads((path / "tokenizer.json").read_text()))
        weights = load_file(str(path / "model.safetensors"))
    except (OSError, KeyError, TypeError, json.JSONDecodeError) as e:
        raise ExportError(f"{path}: not a steplab safetensors export ({type(e).__name__}: {e})") from None
    return build_model(cfg, weights), tok


def _provenance(cfg: ModelConfig, extra: dict[str, Any] | None) -> dict[str, Any]:
    from steplab import __version__

    return {
        "format": "steplab",
        "steplab_version": __version__,
        "model": dataclasses.asdict(cfg),
        **(extra or {}),
    }


def _tokenizer_sample(tok: Tokenizer) -> str:
    if isinstance(tok, CharTokenizer):
        return "".join(tok.chars) + "".join(reversed(tok.chars))
    return "Hello, world!  naïve café — 東京 🎉\n\tdef f(x):\n    return x ** 2\r\n \x00 end"


def _write_atomically(
    out: Path,
    write: Callable[[Path], None],
    *,
    overwrite: bool = False,
    provenance: dict[str, Any] | None = None,
) -> None:
    """Write into a temporary sibling and rename: an interrupted export leaves no half directory.

    An existing non-empty `out` is replaced only with `overwrite`, and only when it is an
    earlier export holding nothing but what steplab wrote (its `EXPORT_MARKER` lists the
    files); never the source run, a parent of it, the current directory, $HOME or /. When
    `out` lies inside a steplab run, that run is locked while the export is written.
    """
    from steplab.atomic import write_dir
    from steplab.rundir import enclosing_run, locked_run

    out = Path(out)
    source = Path(provenance["run"]) if provenance and provenance.get("run") else None
    check_out(out, overwrite=overwrite, source=source)
    with locked_run(enclosing_run(out)):
        write_dir(out, write, replace=True, marker=EXPORT_MARKER, what="write the export")


def check_out(out: Path, *, overwrite: bool, source: Path | None = None) -> None:
    """Refuse an `out` the export may not replace (see `_write_atomically`); touches nothing."""
    from steplab.atomic import check_replaceable

    out = Path(out)
    occupied = out.exists() and not (out.is_dir() and not out.is_symlink() and not any(out.iterdir()))
    if occupied and not overwrite:
        raise ExportError(
            f"--out {out} exists and is not empty (pass --overwrite to replace an earlier export)"
        )
    if occupied:
        check_replaceable(out, marker=EXPORT_MARKER, flag="--out", reads=[source] if source else [])


# --- the command ---------------------------------------------------------------------------

FORMATS = ("hf", "safetensors")
