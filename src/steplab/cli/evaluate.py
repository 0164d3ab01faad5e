"""`steplab eval`: validation loss, perplexity and bits per byte of a run's checkpoint."""

from __future__ import annotations

import json
from dataclasses import dataclass

from steplab.cli.options import Command
from steplab.cli.sample import FromCheckpoint, load_run_model
from steplab.config import opt
from steplab.errors import SteplabError


@dataclass(kw_only=True)
class EvalOptions(FromCheckpoint):
    """Validation loss, perplexity and bits per byte of a run's checkpoint."""

    data: str | None = opt(None, "evaluate on another corpus, same tokenizer (none: the run's)")
    max_windows: int | None = opt(
        None, "a seeded subset of this many windows (none: the run's setting)", ge=1
    )
    json: bool = opt(False, "print JSON")


def cmd_eval(opts: EvalOptions) -> int:
    from steplab.data.batches import val_windows
    from steplab.data.cache import prepare
    from steplab.evaluate import mean_loss, summarize
    from steplab.runtime import autocast, autocast_dtype

    model, tok, loaded = load_run_model(opts)
    cfg = loaded.cfg
    if opts.data:
        cfg.data.path = opts.data
    data = prepare(cfg.data, cfg.tokenizer)
    if data.tokenizer.to_json() != tok.to_json():
        raise SteplabError(
            f"the corpus tokenizes differently from the checkpoint's tokenizer ({loaded.path}); "
            "evaluate on the run's own --data"
        )
    window = cfg.eval.window or cfg.model.block_size
    x, y = val_windows(data.val, window, opts.max_windows or cfg.eval.max_windows, cfg.train.seed)
    device = next(model.parameters()).device
    amp = autocast(device, autocast_dtype(cfg.train, device))
    loss = mean_loss(model, x, y, batch_size=cfg.eval.batch_size, device=device, amp=amp)
    res = {
        "checkpoint": str(loaded.path),
        "step": loaded.state.step,
        "windows": len(x),
        **summarize(loss, data.bytes_per_token),
    }
    if opts.json:
        print(json.dumps(res))
    else:
        print(
            f"{loaded.path}: step {res['step']}, {res['windows']} windows: val_loss {res['val_loss']:.4f}  "
            f"ppl {res['val_ppl']:.2f}  bits/byte {res['val_bpb']:.4f}"
        )
    return 0


EVAL = Command("eval", EvalOptions, cmd_eval)
