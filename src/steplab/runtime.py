"""The machine: device choice, autocast, threads, and a description of the environment."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from steplab.config import TrainConfig
from steplab.errors import ConfigError

# Dense bf16 peak FLOP/s for MFU, by substring of the CUDA device name (no sparsity).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "4090": 165e12}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"--train.device: unknown device {name!r} (cpu, cuda, cuda:N, mps or auto)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--train.device cuda: no CUDA GPU is visible (use --train.device cpu)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--train.device mps: MPS is not available on this machine")
    return device


def cpu_has_amx() -> bool:
    """Intel AMX (Sapphire Rapids and later): bf16 matrix tiles that make bf16 GEMMs ~3x faster."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(probe and probe())


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA, and on CPUs with AMX; full precision on other CPUs, where bf16
    GEMMs are emulated and slower than float32. Weights and optimizer state stay float32."""
    if cfg.dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_amx()):
            return torch.bfloat16
        return None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def configure_threads(cfg: TrainConfig) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)


def peak_flops(device: torch.device) -> float | None:
    """The device's dense bf16 peak, when known (None on CPU: no honest single number)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware, written into every run directory."""
    import numpy

    from steplab import __version__

    info: dict[str, Any] = {
        "steplab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "git_sha": git_sha(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


# --- memory ------------------------------------------------------------------------------


def memory_mb(device: Any) -> dict[str, float]:
    """The memory fields of a step record.

    On CUDA, ``peak_mem_mb``: the peak bytes held by tensors (`max_memory_allocated`), the
    number that decides whether a batch fits. Elsewhere, ``rss_mb``: the process's resident
    set, which includes Python and torch themselves (a few hundred MiB before any model).
    """
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        return {"peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1)}
    rss = rss_bytes()
    return {"rss_mb": round(rss / 2**20, 1)} if rss else {}


def rss_bytes() -> int | None:
    """Current resident set size of this process (Linux /proc; the peak from getrusage elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None
