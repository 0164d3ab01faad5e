"""`steplab export`: the command (the work is `steplab.tools.export`)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Literal

from steplab.cli.options import CHECKPOINTS, Command
from steplab.config import opt
from steplab.errors import SteplabError

FORMATS = Literal["hf", "safetensors"]  # steplab.tools.export.FORMATS


@dataclass(kw_only=True)
class ExportOptions:
    """Write a run's model for transformers (hf) or as plain safetensors."""

    run: str = opt(MISSING, "run directory", positional=True, metavar="RUN")
    out: str = opt(MISSING, "output directory", metavar="DIR")
    checkpoint: CHECKPOINTS = opt("latest", "which checkpoint")
    format: FORMATS = opt("hf", "hf: a transformers directory; safetensors: state dict + config.json")
    overwrite: bool = opt(False, "replace an earlier export at --out (only one steplab wrote)")


def cmd_export(opts: ExportOptions) -> int:
    from steplab import checkpoint as ckpt
    from steplab.tools.export import FAMILIES, build_model, check_out, export_hf, export_safetensors

    run_dir, out = Path(opts.run), Path(opts.out)
    if not run_dir.exists():
        raise SteplabError(f"RUN: {run_dir} does not exist")
    check_out(out, overwrite=opts.overwrite, source=run_dir)  # before anything is loaded
    path = ckpt.latest(run_dir, which=opts.checkpoint)
    loaded = ckpt.load(path, with_optimizer=False)
    model = build_model(loaded.cfg.model, loaded.weights)
    provenance = {"run": str(run_dir), "checkpoint": str(path), "step": loaded.state.step}
    if opts.format == "safetensors":
        export_safetensors(model, loaded.tokenizer, out, provenance=provenance, overwrite=opts.overwrite)
        print(f"wrote {out} (model.safetensors, config.json, tokenizer.json) from {path}")
        return 0
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard bars for a one-shard write
    except ImportError:
        pass
    res = export_hf(model, loaded.tokenizer, out, provenance=provenance, overwrite=opts.overwrite)
    cls = FAMILIES[res.family].cls
    print(
        f"wrote {out} as {cls} from {path}; reloaded with transformers: max |logit diff| {res.max_abs_diff:.2e}"
    )
    return 0


EXPORT = Command("export", ExportOptions, cmd_export)
