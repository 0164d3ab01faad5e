"""`steplab sample`: generate text from a trained run (the work is `steplab.generate`)."""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from steplab.cli.options import CHECKPOINTS, Command
from steplab.config import opt
from steplab.errors import SteplabError


@dataclass(kw_only=True)
class FromCheckpoint:
    """The options of a command that loads a run's model: which run, which checkpoint, where."""

    run: str = opt(MISSING, "run directory", positional=True, metavar="RUN")
    checkpoint: CHECKPOINTS = opt("latest", "which checkpoint")
    device: str = opt("auto", "cpu, cuda, cuda:N, mps or auto")


def load_run_model(opts: FromCheckpoint) -> tuple[Any, Any, Any]:
    """(model in eval mode on its device, tokenizer, the loaded checkpoint)."""
    import torch

    from steplab import checkpoint as ckpt
    from steplab.model import GPT
    from steplab.runtime import resolve_device

    run_dir = Path(opts.run)
    if not run_dir.exists():
        raise SteplabError(f"RUN: {run_dir} does not exist")
    path = ckpt.latest(run_dir, which=opts.checkpoint)
    loaded = ckpt.load(path, with_optimizer=False)
    device = resolve_device(opts.device)
    torch.manual_seed(0)
    model = GPT(loaded.cfg.model)
    ckpt.load_weights(model, loaded.weights, path)
    model.to(device).eval()
    return model, loaded.tokenizer, loaded


@dataclass(kw_only=True)
class SampleOptions(FromCheckpoint):
    """Generate text from a trained run, streamed as it is decoded."""

    prompt: str = opt("", "text to continue (none given: the model starts after a newline)")
    max_new_tokens: int = opt(300, "tokens to generate", ge=0)
    temperature: float = opt(0.8, "sampling temperature (0: greedy)", ge=0)
    top_k: int | None = opt(None, "sample from the k most likely tokens (none: all)", ge=1)
    top_p: float | None = opt(
        None, "sample from the smallest set with this probability (none: all)", gt=0, le=1
    )
    seed: int | None = opt(None, "seed for a reproducible sample (none: random)")


def cmd_sample(opts: SampleOptions) -> int:
    import torch

    from steplab.data.tokenizer import StreamDecoder
    from steplab.generate import generate

    model, tok, _ = load_run_model(opts)
    prompt = opts.prompt or "\n"
    ids = tok.encode(prompt)
    if not ids:
        raise SteplabError("--prompt encodes to no tokens")
    out = sys.stdout
    out.write(opts.prompt)
    dec = StreamDecoder(tok)
    tokens = generate(
        model,
        torch.tensor(ids),
        opts.max_new_tokens,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        seed=opts.seed,
    )
    for t in tokens:
        out.write(dec.push(t))
        out.flush()
    out.write("\n")
    return 0


SAMPLE = Command("sample", SampleOptions, cmd_sample)
