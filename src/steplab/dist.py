"""Distributed training on PyTorch's own runtime: torchrun, DDP and FSDP2.

Parallelism is applied by wrapper functions (`apply_ddp`, `apply_fsdp`); the model code is
unchanged. The process group comes from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT): NCCL on GPUs, gloo on CPU.

Data: every rank draws its slice of the same global batch (see `data.BatchSampler`), so the
batches, and therefore the losses, do not depend on the world size.

Checkpoints are world-size independent: we gather a full (unsharded) state dict on rank 0
and write the same files a single process writes. We chose the gather over
torch.distributed.checkpoint's sharded format because steplab's models fit in one host's
memory, a single-file checkpoint loads anywhere (sample, eval, export, 1 or N processes)
with no resharding step, and the manifest/atomic-rename logic stays the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_from_env(device_type: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    info = DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def local_device(info: DistInfo, device: torch.device) -> torch.device:
    """cuda:LOCAL_RANK on GPUs; the CPU otherwise."""
    if device.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return device


def apply_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel: gradients all-reduced (averaged) in backward."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)


def apply_fsdp(model: nn.Module, device: torch.device) -> nn.Module:
    """FSDP2 (`fully_shard`): each block is a unit, then the root; parameters become DTensors.

    The optimizer must be built after this call (it must see the sharded parameters).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in getattr(model, "blocks", []):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def no_sync_for(step_model: nn.Module) -> Callable[[], AbstractContextManager] | None:
    """DDP's `no_sync`: skip the all-reduce on non-final micro-batches of an accumulated step."""
    no_sync = getattr(step_model, "no_sync", None)
    return no_sync if callable(no_sync) else None


def all_reduce(t: torch.Tensor, op: str = "mean") -> torch.Tensor:
    """Average ("mean"), sum or max a tensor over ranks (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return t
    t = t.clone()
    if op == "max":
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        if op == "mean":
            t /= dist.get_world_size()
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    """Leave the process group (the end of a torchrun training)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unsharded model and optimizer state on rank 0 (a collective: call on every rank).

    The optimizer state comes back in torch's usual index-keyed layout, so a checkpoint
    written by N processes is the same as one written by a single process.
    """
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    return msd, _fqn_to_index(model, optimizer, osd) if osd else {}


def load_full_state(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, msd: dict[str, Any], osd: dict[str, Any] | None
) -> None:
    """Load an unsharded state into a (possibly sharded) model and optimizer; every rank passes it."""
    if not is_sharded(model):
        model.load_state_dict(msd, strict=False)
        if osd is not None and optimizer is not None:
            optimizer.load_state_dict(osd)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, msd, options=opts)
    if osd is not None and optimizer is not None:
        set_optimizer_state_dict(model, optimizer, _index_to_fqn(model, optimizer, osd), options=opts)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def _fqn_to_index(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> dict[str, Any]:
    order = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    groups = [{**g, "params": [order[n] for n in g["params"]]} for g in osd["param_groups"]]
    return {"state": {order[n]: s for n, s in osd["state"].items()}, "param_groups": groups}


def _index_to_fqn(model: nn.Module, optimizer: torch.optim.Optimizer, osd: dict[str, Any]) -> dict[str, Any]:
    names = _param_names(model, optimizer)
    groups = [{**g, "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]
    return {"state": {names[int(i)]: s for i, s in osd["state"].items()}, "param_groups": groups}


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone` running `steplab ARGV` in `nproc` processes."""
    import sys

    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*runner, "-m", "steplab", *argv]


def launch(nproc: int, argv: list[str]) -> int:
    """`steplab train --nproc N ...`: re-run the same command under torchrun on this machine."""
    import subprocess

    return subprocess.call(torchrun_command(nproc, argv))
