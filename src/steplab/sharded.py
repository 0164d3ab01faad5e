"""Sharded checkpoints: every rank writes its own pieces, nothing is gathered.

The default checkpoint gathers the whole model and optimizer state on rank 0 and writes one
``model.safetensors`` (`steplab.checkpoint`); at a billion parameters that gather is slow and
needs the whole state in one process's memory. ``--checkpoint.format sharded`` instead has
every rank write its own shards with torch.distributed.checkpoint into the checkpoint's
``shards/`` (`steplab.dist.save_sharded`); rank 0 then writes the small files (optimizer
param groups, RNG, counters, config, tokenizer) and the manifest over all of them, and
publishes the directory with the same atomic rename as a full checkpoint. A crash at any
point leaves the previous checkpoint intact.

Loading reshards: a run saved at world size 2 resumes at 1, 2 or 4 (`checkpoint.restore`
reads only the pieces each rank's own shards cover), and `eval`, `sample` and `export`
assemble the whole model in one process (`checkpoint.load`), so the safetensors export of a
final model works the same from either format.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn

from steplab import dist as dist_mod
from steplab.checkpoint import PREFIX, SHARDS, TrainState, checkpoint_dir, save
from steplab.config import RunConfig
from steplab.data.tokenizer import Tokenizer
from steplab.errors import CheckpointError


def save_sharded(
    run_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    cfg: RunConfig,
    tokenizer: Tokenizer,
    is_main: bool,
    keep_last: int = 2,
    keep: set[int] | None = None,
) -> Path:
    """Write checkpoint ``step_N`` with every rank's shards; a collective (one process works too).

    Rank 0 makes the temporary directory and tells the others where it is; every rank writes
    its shards into it; rank 0 adds the rest, publishes and prunes (`checkpoint.save`) while
    the others wait, so no rank goes on before the checkpoint exists. Returns the path.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{state.step:08d}"
    staged = None
    if is_main:
        try:
            root.mkdir(parents=True, exist_ok=True)
            staged = tempfile.mkdtemp(dir=root, prefix=".tmp-")
        except OSError as e:
            staged = f"error: {e.strerror or e}"
    staged = dist_mod.broadcast_object(staged)
    if staged is None or staged.startswith("error: "):
        raise CheckpointError(f"cannot write checkpoint {final.name} in {root}: {str(staged)[7:]}")
    tmp = Path(staged)
    try:
        rest = dist_mod.save_sharded(model, optimizer, tmp / SHARDS)
        if is_main:
            save(
                run_dir,
                model=model,
                optimizer=None,
                optim_state=rest,
                state=state,
                cfg=cfg,
                tokenizer=tokenizer,
                keep_last=keep_last,
                keep=keep,
                staged=tmp,
            )
    except BaseException:
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        dist_mod.barrier()
    return final
