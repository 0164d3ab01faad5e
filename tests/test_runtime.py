"""The machine: the measured peak FLOP/s behind MFU, cached per machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steplab import runtime
from steplab.runtime import machine_key, measure_peak_flops, peak_flops

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STEPLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STEPLAB_PEAK_FLOPS", raising=False)
    return tmp_path / "cache" / "peak_flops.json"


def test_measured_peak_is_the_flops_of_a_timed_matmul(monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    real = runtime.time_matmul

    def timed(n: int, device: torch.device, dtype: torch.dtype, *, repeats: int) -> float:
        sizes.append(n)
        return real(n, device, dtype, repeats=repeats)

    monkeypatch.setattr(runtime, "time_matmul", timed)
    flops = measure_peak_flops(CPU, torch.float32, max_n=128)
    assert sizes and set(sizes) == {128}  # capped at max_n, then the repetitions
    assert 1e6 < flops < 1e14  # a 128^3 GEMM on any CPU: more than a MFLOP/s, less than 100 TFLOP/s
    monkeypatch.setattr(runtime, "time_matmul", lambda n, *a, **k: 0.001 * (n / 256) ** 3)
    assert measure_peak_flops(CPU, torch.float32, min_seconds=0.01) == pytest.approx(2 * 512**3 / 0.008)


def test_peak_is_measured_once_then_read_from_the_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[torch.dtype] = []
    monkeypatch.setattr(runtime, "measure_peak_flops", lambda d, dt: calls.append(dt) or 5e10)
    assert peak_flops(CPU, None) == 5e10 and calls == [torch.float32]  # None: float32 training
    assert peak_flops(CPU, None) == 5e10 and calls == [torch.float32]  # cached
    assert peak_flops(CPU, torch.bfloat16) == 5e10 and calls == [torch.float32, torch.bfloat16]
    saved = json.loads(cache.read_text())
    assert set(saved) == {machine_key(CPU, torch.float32), machine_key(CPU, torch.bfloat16)}
    key = machine_key(CPU, torch.float32)
    assert (
        f"x{torch.get_num_threads()} threads" in key and torch.__version__ in key and key.endswith("float32")
    )


def test_peak_override_and_off(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "measure_peak_flops", lambda d, dt: pytest.fail("measured"))
    monkeypatch.setenv("STEPLAB_PEAK_FLOPS", "off")
    assert peak_flops(CPU) is None
    monkeypatch.setenv("STEPLAB_PEAK_FLOPS", "1.5e12")
    assert peak_flops(CPU) == 1.5e12
    assert not cache.exists()


def test_an_unwritable_cache_still_gives_a_peak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No lock and no cache file can be made under a regular file (as root too): measure anyway."""
    (tmp_path / "file").write_text("not a directory")
    monkeypatch.setenv("STEPLAB_CACHE", str(tmp_path / "file" / "cache"))
    monkeypatch.delenv("STEPLAB_PEAK_FLOPS", raising=False)
    monkeypatch.setattr(runtime, "measure_peak_flops", lambda d, dt: 7e9)
    assert peak_flops(CPU, None) == 7e9


def test_a_published_gpu_peak_needs_no_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEPLAB_PEAK_FLOPS", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(runtime, "measure_peak_flops", lambda d, dt: pytest.fail("measured"))
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == 989e12
    assert peak_flops(torch.device("cuda")) == 989e12  # auto: bf16 on CUDA
