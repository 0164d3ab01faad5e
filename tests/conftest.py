"""Shared fixtures: tiny configs, a private token cache, small corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from steplab.config import RunConfig
from steplab.presets import tiny


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Token caches go to a per-session temporary directory, never ~/.cache."""
    cache = os.environ.get("STEPLAB_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "steplab-cache")
    monkeypatch.setenv("STEPLAB_CACHE", cache)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg() -> RunConfig:
    cfg = tiny()
    # float32: exact comparisons hold on every machine, with or without bf16 autocast (AMX);
    # the bf16 path has its own tests (test_train.py).
    cfg.train.dtype = "float32"
    cfg.train.progress = False
    cfg.train.tensorboard = False
    return cfg


SMALL_TEXT = (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n"
    "First Citizen:\nYou are all resolved rather to die than to famish?\n\nAll:\nResolved. resolved.\n\n"
)


@pytest.fixture
def small_corpus(tmp_path: Path) -> Path:
    p = tmp_path / "small.txt"
    p.write_text(SMALL_TEXT * 20, encoding="utf-8")
    return p
