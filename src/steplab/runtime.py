"""The machine: device choice, autocast, threads, its peak FLOP/s (MFU), memory, and a description."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from steplab.atomic import write_file
from steplab.config import TrainConfig
from steplab.errors import ConfigError, StorageError
from steplab.locks import Lock

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


def cpu_has_bf16_gemm() -> bool:
    """A CPU with native bf16 dot products, where oneDNN's bf16 GEMMs beat float32: Intel AMX
    tiles (Sapphire Rapids and later, ~3x) or AVX512-BF16 (Cooper Lake, AMD Zen 4 and later,
    ~2.3x: docs/scale.md). Elsewhere bf16 GEMMs are emulated and slower than float32."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, p, None) and getattr(torch.cpu, p)()) for p in probes)


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA, and on CPUs with native bf16 GEMMs (AMX or AVX512-BF16); full
    precision on other CPUs. Weights and optimizer state stay float32."""
    if cfg.dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_gemm()):
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


# --- peak FLOP/s, for model FLOPs utilisation -------------------------------------------


def peak_flops(device: torch.device, dtype: torch.dtype | None | str = "auto") -> float | None:
    """The device's dense peak FLOP/s for matrix multiplies in `dtype`: MFU's denominator.

    `dtype` is the training step's autocast dtype (None: float32; "auto": what `autocast_dtype`
    picks by default on this device). A GPU in `PEAK_FLOPS` gets its published bf16 figure;
    anything else (CPUs, other GPUs, float32) is measured once by `measure_peak_flops` and
    cached per machine, torch version, thread count and dtype (`peak_flops.json` in
    `cache_home()`), so only the first run on a machine pays for it (well under a second on
    CPU). ``STEPLAB_PEAK_FLOPS=off`` turns MFU off; a number (e.g. ``989e12``) is used as the
    peak as it is. None when off.
    """
    override = os.environ.get("STEPLAB_PEAK_FLOPS", "").strip().lower()
    if override in ("off", "none", "0"):
        return None
    if override:
        return float(override)
    if dtype == "auto":
        dtype = (
            torch.bfloat16
            if device.type == "cuda" or (device.type == "cpu" and cpu_has_bf16_gemm())
            else None
        )
    dtype = dtype or torch.float32
    assert isinstance(dtype, torch.dtype)
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        published = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        if published:
            return published
    return _cached_peak(device, dtype)


def measure_peak_flops(
    device: torch.device,
    dtype: torch.dtype,
    *,
    max_n: int | None = None,
    min_seconds: float = 0.01,
    repeats: int = 3,
) -> float:
    """Best-of-`repeats` FLOP/s of one n x n by n x n matrix multiply in `dtype` on `device`.

    n doubles from 256 until one multiply takes `min_seconds` (or reaches `max_n`), so small
    and large machines both measure a GEMM big enough to run near their peak, quickly. The
    best of several repetitions: a busy machine only ever makes a measurement lower.
    """
    max_n = max_n or (16384 if device.type == "cuda" else 4096)
    n = min(256, max_n)
    while True:
        seconds = time_matmul(n, device, dtype, repeats=1)
        if seconds >= min_seconds or n * 2 > max_n:
            break
        n *= 2
    return 2 * n**3 / min(seconds, time_matmul(n, device, dtype, repeats=repeats))


def time_matmul(n: int, device: torch.device, dtype: torch.dtype, *, repeats: int) -> float:
    """The fastest of `repeats` timed n x n multiplies, after one untimed warm-up."""
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    out = torch.empty(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        _synchronize(device)
        t0 = time.perf_counter()
        torch.mm(a, b, out=out)
        _synchronize(device)  # GPU kernels are asynchronous: time them to completion
        if i:
            best = min(best, time.perf_counter() - t0)
    return best


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def machine_key(device: torch.device, dtype: torch.dtype) -> str:
    """What a measured peak depends on: the chip, torch, the threads (CPU) and the dtype."""
    if device.type == "cuda":
        chip = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    elif device.type == "cpu":
        chip = f"{cpu_model()} x{torch.get_num_threads()} threads"
    else:
        chip = device.type
    return f"{chip}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')}"


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; the platform's processor string elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_home() -> Path:
    """steplab's cache directory: $STEPLAB_CACHE, else $XDG_CACHE_HOME/steplab or ~/.cache/steplab."""
    if os.environ.get("STEPLAB_CACHE"):
        return Path(os.environ["STEPLAB_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steplab"


def _cached_peak(device: torch.device, dtype: torch.dtype) -> float:
    """The measured peak from the cache, measured and stored first if missing.

    One process measures at a time (a lock file): processes started together (torchrun, a
    test suite) would otherwise share the cores and each measure a fraction of the peak.
    A cache that cannot be written is no error: the figure is then measured per process.
    """
    path, key = cache_home() / "peak_flops.json", machine_key(device, dtype)
    with _locked(path.with_suffix(".lock")):
        known = _read_json(path)
        if isinstance(known.get(key), (int, float)):
            return float(known[key])
        value = measure_peak_flops(device, dtype)
        try:
            write_file(path, json.dumps({**_read_json(path), key: value}, indent=1, sort_keys=True) + "\n")
        except StorageError:
            pass
    return value


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """`steplab.locks` on `path`, waiting for the holder; none where the directory cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = Lock(path, what=f"the peak FLOP/s cache {path.parent}").acquire(wait=True)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        lock.release()


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
