"""Distributed training on PyTorch's own runtime: torchrun, DDP and FSDP2.

Parallelism is applied by wrapper functions (`apply_ddp`, `apply_fsdp`); the model code is
unchanged. The process group comes from torchrun's environment (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR/PORT): NCCL on GPUs, gloo on CPU.

Data: every rank draws its slice of the same global batch (see `data.BatchSampler`), so the
batches, and therefore the losses, do not depend on the world size.

Checkpoints are world-size independent either way. By default (`full_state`) we gather a
full (unsharded) state dict on rank 0 and write the same files a single process writes: a
single-file checkpoint loads anywhere with no resharding step. At sizes where the gather is
slow or the whole model does not fit in one process, `--checkpoint.format sharded` has every
rank write its own shards with torch.distributed.checkpoint (`save_sharded`), and loading
reshards to any world size (`load_sharded`) or assembles the whole model in one process for
eval, sample and export (`read_sharded_model`). The shards are safetensors files (DCP's
Hugging Face storage: the layout lives in their JSON headers), so loading unpickles nothing.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
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


# --- sharded checkpoints: torch.distributed.checkpoint (DCP) ---------------------------------


def _optimizers(optimizer: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    """A `Chain`'s parts, else the optimizer: torch's state-dict API merges several by parameter name."""
    return list(getattr(optimizer, "optimizers", [optimizer]))


def _tied_names(model: nn.Module) -> set[str]:
    """Names that alias another parameter (a tied output head): stored once, loaded through the other."""
    every = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    return every - {n for n, _ in model.named_parameters()}


def _model_shards(model: nn.Module) -> dict[str, Any]:
    """The model's state dict as DCP sees it: DTensor shards under FSDP, tied weights once."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    tied = _tied_names(model)
    return {k: v for k, v in get_model_state_dict(model).items() if k not in tied}


def _split_optimizer(osd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A parameter-name keyed optimizer state split into its tensors (sharded, possibly
    DTensors) and the rest: the param groups and any non-tensor state, small and the same on
    every rank."""
    tensors = {
        n: {k: v for k, v in st.items() if isinstance(v, torch.Tensor)} for n, st in osd["state"].items()
    }
    other = {
        n: {k: v for k, v in st.items() if not isinstance(v, torch.Tensor)} for n, st in osd["state"].items()
    }
    return tensors, {"state": other, "param_groups": osd["param_groups"]}


SHARD_FILE_BYTES = 256 << 20  # a rank's file is built in memory before it is written: keep each small


def _files_of(state: dict[str, Any]) -> dict[str, int]:
    """Each tensor's file (1, 2, ...): consecutive tensors of this rank's shards up to
    `SHARD_FILE_BYTES` a file. DCP's safetensors writer copies a file's tensors and serialises
    the file in memory, so the file size, not the shard size, bounds the memory a save adds."""
    files, size, index = {}, 0, 1
    for fqn, t in _flat_tensors(state):
        local = t.to_local() if hasattr(t, "to_local") else t
        nbytes = local.numel() * local.element_size()
        if size and size + nbytes > SHARD_FILE_BYTES:
            index, size = index + 1, 0
        files[fqn], size = index, size + nbytes
    return files


def _flat_tensors(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor of a nested dict, named as DCP flattens them (dots)."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _flat_tensors(v, f"{prefix}{k}.")
        elif isinstance(v, torch.Tensor):
            out.append((f"{prefix}{k}", v))
    return out


def save_sharded(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, directory: str | os.PathLike
) -> dict[str, Any] | None:
    """Every rank writes its own shards of the model and optimizer tensors into `directory` (a
    collective; one process works too); returns the optimizer's non-tensor rest for rank 0 to store.

    Replicated tensors (DDP, one process) are written once; the files are
    ``shard-0000R-model-0000F-of-0000N.safetensors`` (rank R, file F of at most N), each with its
    tensors' offsets in the whole in the header.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state: dict[str, Any] = {"model": _model_shards(model)}
    rest = None
    # An optimizer that has not stepped yet has nothing to save; asking torch for its state
    # would create it with a zero-lr step (and count that step).
    if optimizer is not None and any(o.state for o in _optimizers(optimizer)):
        state["optim"], rest = _split_optimizer(get_optimizer_state_dict(model, _optimizers(optimizer)))
    files = _files_of(state)
    writer = HuggingFaceStorageWriter(str(directory), fqn_to_index_mapping=files, save_distributed=True)
    with _single_process_quiet():
        dcp.save(state, storage_writer=writer, no_dist=_alone())
    return rest


def load_sharded(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    directory: str | os.PathLike,
    rest: dict[str, Any] | None,
) -> None:
    """Load shards saved at any world size into this (possibly sharded) model and optimizer:
    each rank reads only the pieces of the files its own shards cover (a collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    # The optimizer's layout first: a fresh optimizer gets its state by a zero-lr step, which
    # the model weights loaded after it then overwrite. Without `rest` (a checkpoint without
    # optimizer state) only the model is loaded.
    opts = _optimizers(optimizer) if optimizer is not None and rest is not None else []
    osd: dict[str, Any] = dict(get_optimizer_state_dict(model, opts)) if opts else {}
    state: dict[str, Any] = {"model": _model_shards(model)}
    if opts:
        state["optim"], _ = _split_optimizer(osd)
    with _single_process_quiet():
        dcp.load(state, storage_reader=HuggingFaceStorageReader(str(directory)), no_dist=_alone())
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=False))
    if opts and rest is not None:
        for name, st in osd["state"].items():
            st.update(state["optim"][name])
            st.update(rest["state"].get(name, {}))
        osd["param_groups"] = rest["param_groups"]
        set_optimizer_state_dict(model, opts, osd)


def read_sharded_model(directory: str | os.PathLike, *, data: bool = True) -> dict[str, torch.Tensor]:
    """The whole model from shards saved at any world size, in this one process (eval, sample,
    export): names as in the model's state dict, tied weights once. With ``data=False``, meta
    tensors of the right shapes only (nothing read beyond the headers)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader

    meta = HuggingFaceStorageReader(str(directory)).read_metadata().state_dict_metadata
    device = "cpu" if data else "meta"
    weights = {
        k: torch.empty(m.size, dtype=m.properties.dtype, device=device)  # type: ignore[union-attr]
        for k, m in meta.items()
        if k.startswith("model.")
    }
    if data:
        with _single_process_quiet():
            dcp.load(weights, storage_reader=HuggingFaceStorageReader(str(directory)), no_dist=True)
    return {k.removeprefix("model."): v for k, v in weights.items()}


def _alone() -> bool:
    """No process group: DCP then reads and writes everything in this process."""
    return not (dist.is_available() and dist.is_initialized())


@contextmanager
def _single_process_quiet() -> Iterator[None]:
    """DCP warns on every save and load without a process group; one process is a use we mean."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        yield


def broadcast_object(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (identity for one process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def torchrun_command(nproc: int, argv: list[str]) -> list[str]:
    """`python -m torch.distributed.run --standalone` running `steplab ARGV` in `nproc` processes."""
    import sys

    runner = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*runner, "-m", "steplab", *argv]


def launch(nproc: int, argv: list[str]) -> int:
    """`steplab train --nproc N ...`: re-run the same command under torchrun on this machine."""
    import subprocess

    return subprocess.call(torchrun_command(nproc, argv))
