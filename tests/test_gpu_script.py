"""benchmarks/gpu.py, the prepared GPU script, dry-runs on the CPU: every check's plumbing works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


@pytest.mark.slow
def test_the_gpu_script_dry_runs_every_check(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=SCRIPT.parent,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "gpu.json").read_text())["results"]
    assert set(results) == {"mfu", "speedrun", "batch_find", "parallel"}
    assert all(r["met"] for r in results.values()), results
    assert results["mfu"]["rows"]["eager"]["tokens_per_s"] > 0
    assert results["parallel"]["sharded_resume"] == {"saved_by": 2, "shards": 2, "resumed_to_step": 16}
    assert "| step | val loss (cpu) |" in (tmp_path / "gpu.md").read_text()
