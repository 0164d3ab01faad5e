"""Checkpoints: everything the next step depends on, written atomically, loaded safely.

A checkpoint is a directory ``checkpoints/step_00001234/`` holding

- ``model.safetensors``  the weights (safetensors: no code can hide in them),
- ``optimizer.pt``       optimizer state, plain tensors and containers only,
- ``rng.pt``             every RNG state, stored as tensors,
- ``state.json``         step, token and time counters, best validation loss,
- ``config.toml``, ``tokenizer.json``,
- ``base.json``          only for a fine-tune with frozen parameters: ``model.safetensors`` then
                         holds just the parameters that train, and this file names the
                         ``--init-from`` directory the others come from, with its fingerprint,
- ``manifest.json``      sha256 of each file, written last.

A sharded checkpoint (`steplab.sharded`) holds every rank's ``shards/*.safetensors`` instead
of ``model.safetensors``, and in ``optimizer.pt`` only the optimizer's non-tensor rest.

It is written into a temporary directory, fsynced, then renamed into place
(`steplab.atomic`), so a crash, a kill or a full disk leaves the previous checkpoint intact. Loading checks the manifest and
reads tensors with ``torch.load(weights_only=True)``: nothing is unpickled beyond plain
tensors and containers, and a file the manifest does not list is refused.

`restore` puts a checkpoint back into a live model and optimizer: the resume path and the
divergence guard's rollback share it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from steplab.atomic import adopted, describe, os_error_of, publish, staging_dir
from steplab.checkpoint_checks import check_structure, check_weights, checked_state, model_differences
from steplab.config import RunConfig, dump_toml, load_toml
from steplab.data.tokenizer import Tokenizer, from_json
from steplab.errors import CheckpointError
from steplab.rng import rng_state, set_rng_state

PREFIX = "step_"
SHARDS = "shards"  # a sharded checkpoint's subdirectory of safetensors shards


@dataclass
class TrainState:
    """The loop's counters: what, besides weights and optimizer, a resumed run needs."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    metrics_lines: int | None = (
        None  # records in metrics.jsonl when this was saved (resume cuts back to them)
    )
    guard: dict[str, Any] = field(default_factory=dict)  # the divergence guard's statistics and offsets


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A model's weights on the CPU, tied tensors once: what model.safetensors holds."""
    return dedup_state(model.state_dict())


def dedup_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights with shared tensors stored once (safetensors refuses aliases)."""
    seen: dict[int, str] = {}
    out = {}
    for name, t in state.items():
        if t.data_ptr() in seen and t.numel() > 0:
            continue
        seen[t.data_ptr()] = name
        out[name] = t.detach().contiguous().cpu()
    return out


def save(
    run_dir: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: TrainState,
    cfg: RunConfig,
    tokenizer: Tokenizer,
    keep_last: int = 2,
    keep: set[int] | None = None,
    model_state: dict[str, torch.Tensor] | None = None,
    optim_state: dict[str, Any] | None = None,
    staged: Path | None = None,
) -> Path:
    """Write a checkpoint atomically and prune old ones (keeping the newest `keep_last` and `keep`).

    `model_state`/`optim_state` override the model's and optimizer's own state dicts (the
    full state gathered from FSDP shards). `staged`: a temporary directory in the run's
    checkpoints already holding every rank's shards (`steplab.sharded`), adopted as the
    staging directory (and removed if the write fails).
    A failed write (a full disk, a quota, a read-only file system) removes its temporary
    directory and raises a `CheckpointError` that names the checkpoint still intact; nothing
    older is touched.
    """
    root = checkpoint_dir(run_dir)
    final = root / f"{PREFIX}{state.step:08d}"
    weights, base = None, None
    if staged is None:
        weights = dedup_state(model_state) if model_state is not None else dedup_state(model.state_dict())
        from steplab.hf.pretrained import base_reference

        base = base_reference(cfg, model)
        if base is not None:  # a fine-tune with frozen parameters: those are the base model's, by reference
            weights = {k: v for k, v in weights.items() if k in base["trainable"]}
    if optim_state is None and optimizer is not None:
        optim_state = optimizer.state_dict()
    try:
        with staging_dir(final, prefix=".tmp-") if staged is None else adopted(staged) as tmp:
            _write_files(tmp, weights, optim_state, state, cfg, tokenizer, base=base)
            publish(
                tmp, final, replace=True, old_prefix=".old-"
            )  # the same step again (a rollback): replaced
    except Exception as e:  # torch and safetensors report a full disk as their own errors
        err = os_error_of(e, root)
        if err is None:
            raise
        raise _write_error(err, root, final) from None
    prune(root, keep_last, keep or set())
    return final


def _write_files(
    tmp: Path,
    weights: dict[str, torch.Tensor] | None,
    optim_state: dict[str, Any] | None,
    state: TrainState,
    cfg: RunConfig,
    tokenizer: Tokenizer,
    *,
    base: dict[str, Any] | None = None,
) -> None:
    """Every file of a checkpoint into `tmp`, fsynced, the manifest last."""
    if base is not None:
        (tmp / "base.json").write_text(json.dumps(base, indent=1))
    if weights is not None:  # None: the shards are in tmp already
        save_file(weights, str(tmp / "model.safetensors"))
    if optim_state is not None:
        torch.save(optim_state, tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
    (tmp / "config.toml").write_text(dump_toml(cfg))
    (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.to_json()))
    files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
    manifest = {"step": state.step, "files": {f: _sha256(tmp / f) for f in files}}
    for f in files:
        with open(tmp / f, "rb") as fh:
            os.fsync(fh.fileno())
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with open(tmp / "manifest.json", "rb") as fh:
        os.fsync(fh.fileno())


def _write_error(e: OSError, root: Path, final: Path) -> CheckpointError:
    steps = [s for s in list_steps(root) if root / f"{PREFIX}{s:08d}" != final]
    intact = (
        f"the previous checkpoint {root / f'{PREFIX}{steps[-1]:08d}'} is intact"
        if steps
        else "no earlier checkpoint exists"
    )
    return CheckpointError(
        f"cannot write checkpoint {final.name} in {root}: {describe(e)}; {intact}: "
        "once fixed, resume with --resume"
    )


def prune(root: Path, keep_last: int, keep: set[int]) -> None:
    steps = sorted(list_steps(root))
    for s in steps[:-keep_last] if keep_last else steps:
        if s not in keep:
            shutil.rmtree(root / f"{PREFIX}{s:08d}", ignore_errors=True)
    remove_partial(root.parent)  # leftovers of a crash mid-write


def remove_partial(run_dir: Path) -> None:
    """Delete what a process killed mid-write left behind (never a published checkpoint)."""
    root = checkpoint_dir(run_dir)
    if root.is_dir():
        for tmp in [*root.glob(".tmp-*"), *root.glob(".old-*")]:
            shutil.rmtree(tmp, ignore_errors=True)


def list_steps(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit():
            out.append(int(p.name[len(PREFIX) :]))
    return sorted(out)


def verify(path: Path) -> None:
    """Check the manifest's hashes; raise `CheckpointError` on anything missing or changed."""
    manifest_path = path / "manifest.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"{path}: no manifest.json (incomplete or not a steplab checkpoint)")
    try:
        files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, dict) or not all(isinstance(d, str) for d in files.values()):
        raise CheckpointError(f"{path}: manifest.json is damaged (not a steplab manifest)")
    for name, digest in files.items():
        if not _inside(name):
            raise CheckpointError(f"{path}: manifest.json names a file outside the checkpoint ({name!r})")
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} is corrupted (checksum mismatch)")
    unexpected = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} - set(files)
    unexpected.discard("manifest.json")
    if unexpected:
        raise CheckpointError(f"{path}: unexpected files {sorted(unexpected)} (refusing to load)")


def _inside(name: object) -> bool:
    """A manifest entry names a file of the checkpoint: ``NAME`` or ``shards/NAME``, never hidden."""
    parts = name.split("/") if isinstance(name, str) and "\\" not in name else [""]
    return parts[:-1] in ([], [SHARDS]) and not any(p.startswith(".") or not p for p in parts)


def latest(run_dir: Path, *, which: str = "latest") -> Path:
    """The newest valid checkpoint (or the best, with which='best'); damaged ones are skipped with a warning."""
    root = checkpoint_dir(run_dir)
    steps = list_steps(root)
    if not steps:
        raise CheckpointError(f"{run_dir}: no checkpoint found (train first, or check --run)")
    candidates = [root / f"{PREFIX}{s:08d}" for s in reversed(steps)]
    if which == "best":
        best = _best_step(root)
        if best is not None and best in steps:
            candidates = [root / f"{PREFIX}{best:08d}"] + [
                c for c in candidates if not c.name.endswith(f"{best:08d}")
            ]
    errors = []
    for c in candidates:
        try:
            verify(c)
            return c
        except CheckpointError as e:
            warnings.warn(f"skipping damaged checkpoint: {e}", stacklevel=2)
            errors.append(str(e))
    raise CheckpointError(f"{run_dir}: every checkpoint is damaged ({errors[0]})")


def _best_step(root: Path) -> int | None:
    for s in reversed(list_steps(root)):
        try:
            st = json.loads((root / f"{PREFIX}{s:08d}" / "state.json").read_text())
        except (OSError, ValueError):
            continue
        best = st.get("best_step") if isinstance(st, dict) else None
        return best if isinstance(best, int) and not isinstance(best, bool) else None
    return None


@dataclass
class Loaded:
    path: Path
    cfg: RunConfig
    tokenizer: Tokenizer
    weights: dict[str, torch.Tensor]
    state: TrainState
    optimizer: dict[str, Any] | None
    rng: dict[str, torch.Tensor] | None


def is_sharded(path: Path) -> bool:
    """Whether checkpoint `path` holds shards (`steplab.sharded`) rather than one weights file."""
    return (path / SHARDS).is_dir()


def load(path: Path, *, with_optimizer: bool = True, whole: bool = True) -> Loaded:
    """Read a verified checkpoint: safetensors weights, weights-only tensors, JSON and TOML.

    A fine-tune's checkpoint that stores only what trains (``base.json``) is completed from its
    base model unless `whole` is false (`restore`, whose model holds the base already). Shards
    are assembled whole, or with `whole` false given as meta tensors of their shapes only.
    """
    verify(path)
    try:
        cfg = load_toml(path / "config.toml")
        tokenizer = from_json(json.loads((path / "tokenizer.json").read_text()))
        from steplab.dist import read_sharded_model

        weights = (
            read_sharded_model(path / SHARDS, data=whole)
            if is_sharded(path)
            else load_file(str(path / "model.safetensors"))
        )
        if (path / "base.json").is_file():
            from steplab.hf.pretrained import with_base

            weights = with_base(path, cfg, weights, whole=whole)
        state = TrainState(
            **checked_state(json.loads((path / "state.json").read_text()), path / "state.json")
        )
        opt = None
        if with_optimizer and (path / "optimizer.pt").exists():
            opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = (
            torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
            if (path / "rng.pt").exists()
            else None
        )
        check_structure(path, opt, rng)
    except CheckpointError:
        raise
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: refusing to unpickle a file that holds more than plain tensors and containers "
            "(a tampered or foreign checkpoint); nothing in it was run"
        ) from None
    except Exception as e:  # a truncated file, a bad JSON
        raise CheckpointError(
            f"{path}: cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return Loaded(
        path=path, cfg=cfg, tokenizer=tokenizer, weights=weights, state=state, optimizer=opt, rng=rng
    )


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Check shapes, then load weights into an unsharded model (tied weights stored once)."""
    check_weights(model.cfg, weights, where)  # type: ignore[arg-type]
    model.load_state_dict(weights, strict=False)


# Optimizer settings that come from the config, not from training: after loading a saved
# optimizer state they are set back to the current config's values, so a flag changed on
# resume (or a rollback) takes effect. The learning rate is set by the loop every step.
CONFIG_KEYS = ("weight_decay", "betas", "eps", "momentum", "nesterov", "dampening", "lr_mult")


def restore(
    path: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    tokenizer: Tokenizer,
    optim_name: str | None = None,
) -> TrainState:
    """Load checkpoint `path` into a live model and optimizer and restore the RNGs; return its counters."""
    loaded = load(path, with_optimizer=optimizer is not None, whole=False)
    if optim_name is not None and optimizer is not None and loaded.cfg.optim.name != optim_name:
        raise CheckpointError(
            f"{path}: the checkpoint was trained with --optim.name {loaded.cfg.optim.name}, this run uses "
            f"{optim_name}; resume with the same optimizer"
        )
    if loaded.tokenizer.to_json() != tokenizer.to_json():
        raise CheckpointError(
            f"{path}: the checkpoint's tokenizer ({_describe(loaded.tokenizer)}) does not match this run's "
            f"({_describe(tokenizer)}); resume with the run's own --data and --tokenizer"
        )
    from steplab.dist import load_full_state, load_sharded

    changed = model_differences(loaded.cfg.model, model.cfg)  # type: ignore[arg-type]
    differs = (
        f"this run's model differs from the checkpoint's: {'; '.join(changed)}; a resumed run keeps its "
        "model (drop these flags, or start a new run with --overwrite or another --run-dir)"
    )
    if (path / "base.json").is_file():  # only what trains is stored; the model holds the base already
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(loaded.weights) != trainable:
            raise CheckpointError(
                f"{path}: its trained parameters are not this run's ({sorted(trainable)[:3]}...)"
            )
    else:
        try:
            check_weights(model.cfg, loaded.weights, path)  # type: ignore[arg-type]
        except CheckpointError as e:
            raise CheckpointError(f"{e}; {differs}" if changed else str(e)) from None
    if changed:  # same shapes, another function (n_head, norm_eps, ...)
        raise CheckpointError(f"{path}: {differs}")
    opt = optimizer if loaded.optimizer is not None else None
    current = [{k: g[k] for k in CONFIG_KEYS if k in g} for g in opt.param_groups] if opt else []
    try:
        if is_sharded(path):  # every rank reads the pieces of the shards its own shards cover
            load_sharded(model, opt, path / SHARDS, loaded.optimizer)
        else:  # a plain model and FSDP shards alike (every rank reads the full state)
            load_full_state(model, opt, loaded.weights, loaded.optimizer)
    except (ValueError, KeyError, RuntimeError, IndexError) as e:
        raise CheckpointError(
            f"{path}: optimizer state does not match this run's optimizer ({str(e).splitlines()[0][:200]})"
        ) from None
    if opt is not None:
        for group, settings in zip(opt.param_groups, current, strict=True):
            group.update(settings)
        from steplab.optim import train_mode

        train_mode(opt)  # saved in eval mode (schedule-free): back to the point it steps from
    if loaded.rng is not None:
        set_rng_state(loaded.rng)
    return loaded.state


def saved_config(path: Path) -> RunConfig:
    """The config a checkpoint was trained with (its own config.toml)."""
    try:
        return load_toml(path / "config.toml")
    except Exception as e:  # a damaged file: say which
        raise CheckpointError(
            f"{path}: config.toml cannot be read ({str(e).splitlines()[0][:200]})"
        ) from None


def _describe(tok: Tokenizer) -> str:
    return f"{tok.kind}, {tok.vocab_size} tokens"
