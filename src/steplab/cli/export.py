"""`steplab export`: the command (the work is `steplab.tools.export`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steplab.errors import SteplabError
from steplab.tools.export import FORMATS, build_model, export_hf, export_safetensors


def cmd_export(args: argparse.Namespace) -> int:
    from steplab import checkpoint as ckpt

    run_dir, out = Path(args.run), Path(args.out)
    if not run_dir.exists():
        raise SteplabError(f"--run: {run_dir} does not exist")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not args.overwrite:
        raise SteplabError(f"--out: {out} exists and is not empty (pass --overwrite to replace it)")
    path = ckpt.latest(run_dir, which=args.checkpoint)
    loaded = ckpt.load(path, with_optimizer=False)
    model = build_model(loaded.cfg.model, loaded.weights)
    provenance = {"run": str(run_dir), "checkpoint": str(path), "step": loaded.state.step}
    if args.format == "safetensors":
        res = export_safetensors(model, loaded.tokenizer, out, provenance=provenance)
        print(f"wrote {out} (model.safetensors, config.json, tokenizer.json) from {path}")
        return 0
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # per-shard bars for a one-shard write
    except ImportError:
        pass
    res = export_hf(model, loaded.tokenizer, out, provenance=provenance)
    cls = "LlamaForCausalLM" if res.family == "llama" else "GPT2LMHeadModel"
    print(
        f"wrote {out} as {cls} from {path}; reloaded with transformers: "
        f"max |logit diff| {res.max_abs_diff:.2e}"
    )
    return 0


def register_cli(sub: Any, commands: dict[str, Callable[[argparse.Namespace], int]]) -> None:
    p = sub.add_parser("export", help="write a run's model for transformers (hf) or as plain safetensors")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", choices=["latest", "best"], default="latest", help="which checkpoint")
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="hf",
        help="hf: transformers directory; safetensors: state dict + config.json",
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    commands["export"] = cmd_export
