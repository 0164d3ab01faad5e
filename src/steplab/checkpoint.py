"""Checkpoints: everything the next step depends on, written atomically, loaded safely.

A checkpoint is a directory ``checkpoints/step_00001234/`` holding

- ``model.safetensors``  the weights (safetensors: no code can hide in them),
- ``optimizer.pt``       optimizer state, plain tensors and containers only,
- ``rng.pt``             every RNG state, stored as tensors,
- ``state.json``         step, token and time counters, best validation loss,
- ``config.toml``, ``tokenizer.json``,
- ``manifest.json``      sha256 of each file, written last.

It is written into a temporary directory, fsynced, then renamed into place, so a crash
(or a full disk) leaves the previous checkpoint intact. Loading checks the manifest and
reads tensors with ``torch.load(weights_only=True)``: nothing is unpickled beyond plain
tensors and containers.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from steplab.config import RunConfig, dump_toml, load_toml
from steplab.errors import CheckpointError
from steplab.tokenizer import Tokenizer, from_json

PREFIX = "step_"


@dataclass
class TrainState:
    """The loop's counters: what, besides weights and optimizer, a resumed run needs."""

    step: int = 0
    tokens: int = 0
    train_seconds: float = 0.0
    best_val_loss: float | None = None
    best_step: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def rng_state() -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        cuda = [state[k] for k in sorted(state) if k.startswith("cuda")]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)


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
) -> Path:
    """Write a checkpoint atomically and prune old ones (keeping the newest `keep_last` and `keep`).

    `model_state`/`optim_state` override the model's and optimizer's own state dicts (the
    full state gathered from FSDP shards).
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{state.step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".tmp-"))
    try:
        weights = dedup_state(model_state) if model_state is not None else dedup_state(model.state_dict())
        save_file(weights, str(tmp / "model.safetensors"))
        if optim_state is None and optimizer is not None:
            optim_state = optimizer.state_dict()
        if optim_state is not None:
            torch.save(optim_state, tmp / "optimizer.pt")
        torch.save(rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(asdict(state), indent=1))
        (tmp / "config.toml").write_text(dump_toml(cfg))
        (tmp / "tokenizer.json").write_text(json.dumps(tokenizer.to_json()))
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {"step": state.step, "files": {f: _sha256(tmp / f) for f in files}}
        for f in files:
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        with open(tmp / "manifest.json", "rb") as fh:
            os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    prune(root, keep_last, keep or set())
    return final


def prune(root: Path, keep_last: int, keep: set[int]) -> None:
    steps = sorted(list_steps(root))
    for s in steps[:-keep_last] if keep_last else steps:
        if s not in keep:
            shutil.rmtree(root / f"{PREFIX}{s:08d}", ignore_errors=True)
    for tmp in root.glob(".tmp-*"):  # leftovers of a crash mid-write
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
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise CheckpointError(f"{path}: manifest.json is damaged") from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path}: {name} is missing")
        if _sha256(f) != digest:
            raise CheckpointError(f"{path}: {name} is corrupted (checksum mismatch)")
    unexpected = {p.name for p in path.iterdir()} - set(files) - {"manifest.json"}
    if unexpected:
        raise CheckpointError(f"{path}: unexpected files {sorted(unexpected)} (refusing to load)")


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
            return st.get("best_step")
        except (OSError, json.JSONDecodeError):
            continue
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


def load(path: Path, *, with_optimizer: bool = True) -> Loaded:
    """Read a verified checkpoint: safetensors weights, weights-only tensors, JSON and TOML."""
    verify(path)
    try:
        cfg = load_toml(path / "config.toml")
        tokenizer = from_json(json.loads((path / "tokenizer.json").read_text()))
        weights = load_file(str(path / "model.safetensors"))
        state = TrainState(**json.loads((path / "state.json").read_text()))
        opt = None
        if with_optimizer and (path / "optimizer.pt").exists():
            opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = (
            torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
            if (path / "rng.pt").exists()
            else None
        )
    except CheckpointError:
        raise
    except Exception as e:  # an unpickling refusal, a truncated file, a bad JSON
        raise CheckpointError(
            f"{path}: cannot be loaded safely ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    return Loaded(
        path=path, cfg=cfg, tokenizer=tokenizer, weights=weights, state=state, optimizer=opt, rng=rng
    )


def check_weights(model_cfg: Any, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Refuse a checkpoint of another model shape, naming the first mismatch."""
    from steplab.model import GPT

    with torch.device("meta"):
        ref = GPT(model_cfg)
    own = ref.state_dict()
    tied = set(own) - set(dedup_state_meta(ref))
    missing = [k for k in own if k not in weights and k not in tied]
    extra = [k for k in weights if k not in own]
    if missing or extra:
        raise CheckpointError(
            f"{where}: checkpoint does not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for k, t in weights.items():
        if own[k].shape != t.shape:
            raise CheckpointError(
                f"{where}: {k} has shape {tuple(t.shape)} in the checkpoint but {tuple(own[k].shape)} in the model "
                "(the checkpoint is of a different model shape)"
            )


def dedup_state_meta(model: nn.Module) -> list[str]:
    """Names of a model's parameters and buffers with tied ones once (works on the meta device)."""
    return [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: Path) -> None:
    """Check shapes, then load weights into an unsharded model (tied weights stored once)."""
    check_weights(model.cfg, weights, where)  # type: ignore[arg-type]
    model.load_state_dict(weights, strict=False)
