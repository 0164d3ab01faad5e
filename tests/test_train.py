"""The step and the loop: memorisation, accumulation, logging, checkpoints, sample and eval."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steplab import checkpoint as ckpt
from steplab.config import RunConfig
from steplab.errors import SteplabError
from steplab.loop.fit import train
from steplab.loop.hooks import Callback, StopTraining
from steplab.loop.session import build
from steplab.loop.step import train_step
from steplab.model import GPT
from steplab.optim import build_optimizer, param_groups
from steplab.rundir import read_metrics


def test_tiny_model_memorises_a_2kb_corpus(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    line = "the quick brown fox jumps over the lazy dog, then sleeps under the old oak tree until the moon rises.\n"
    p = tmp_path / "two_kb.txt"
    p.write_text((line * 30)[:2048])
    cfg = tiny_cfg
    cfg.data.path = str(p)
    cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head, cfg.model.block_size = 2, 64, 4, 128
    cfg.optim.lr, cfg.optim.weight_decay = 1e-2, 0.0
    cfg.schedule.name, cfg.schedule.warmup_steps, cfg.schedule.min_lr_ratio = "cosine", 10, 0.0
    cfg.train.batch_size, cfg.train.max_steps, cfg.train.log_every = 8, 250, 50
    cfg.eval.every = 0
    result = train(cfg, tmp_path / "run")
    last = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r][-1]
    assert last["step"] == 250 and last["loss"] < 0.05, last
    assert result.status == "finished" and result.final["val_loss"] < 0.05


def test_grad_accumulation_matches_one_big_batch(tiny_cfg: RunConfig) -> None:
    # SGD: the update is linear in the gradient, so equal gradients give equal weights to
    # rounding. (Adam's first step is about lr * sign(g): a gradient of 1e-10 against 2e-10,
    # rounding noise, would move a weight by lr/100 and fail any tight tolerance.)
    tiny_cfg.optim.name, tiny_cfg.optim.lr, tiny_cfg.optim.momentum = "sgd", 0.1, 0.0
    s = build(tiny_cfg)
    torch.manual_seed(0)
    a, b = GPT(s.cfg.model), GPT(s.cfg.model)
    b.load_state_dict(a.state_dict())
    oa, ob = build_optimizer(a, s.cfg.optim, s.device), build_optimizer(b, s.cfg.optim, s.device)
    x1, y1 = s.sampler.batch_at(0)
    x2, y2 = s.sampler.batch_at(1)
    ra = train_step(a, oa, [(torch.cat([x1, x2]), torch.cat([y1, y2]))], grad_clip=1.0)
    rb = train_step(b, ob, [(x1, y1), (x2, y2)], grad_clip=1.0)
    assert torch.allclose(ra.loss, rb.loss, atol=1e-6)
    assert torch.allclose(ra.grad_norm, rb.grad_norm, atol=1e-5)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_param_groups_exclude_norms_biases_and_embeddings_from_decay(tiny_cfg: RunConfig) -> None:
    tiny_cfg.model.vocab_size = 20
    tiny_cfg.model.tie_embeddings = False
    tiny_cfg.optim.head_lr_mult = 0.5
    model = GPT(tiny_cfg.model)
    groups = {g["name"]: g for g in param_groups(model, tiny_cfg.optim, tiny_cfg.model)}
    assert groups["vector"]["weight_decay"] == 0.0 and groups["embed"]["weight_decay"] == 0.0
    assert groups["matrix"]["weight_decay"] == tiny_cfg.optim.weight_decay
    assert groups["head"]["lr_mult"] == 0.5
    n_grouped = sum(p.numel() for g in groups.values() for p in g["params"])
    assert n_grouped == sum(p.numel() for p in model.parameters())
    tiny_cfg.optim.decay_embeddings = True
    groups = {g["name"]: g for g in param_groups(model, tiny_cfg.optim, tiny_cfg.model)}
    assert groups["embed"]["weight_decay"] == tiny_cfg.optim.weight_decay


def test_run_directory_records(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    run = tmp_path / "run"
    result = train(tiny_cfg, run)
    records = read_metrics(run / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in steps] == [10, 20, 30, 40, 50]
    for r in steps:
        assert {
            "step",
            "tokens",
            "train_seconds",
            "elapsed_seconds",
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_second",
        } <= set(r)
    assert [r["step"] for r in evals] == [25, 50]
    assert all(r["elapsed_seconds"] >= r["train_seconds"] for r in records)
    assert steps[-1]["tokens"] == 50 * 8 * 32
    assert result.final["val_loss"] == evals[-1]["val_loss"]
    assert (run / "config.toml").exists() and (run / "tokenizer.json").exists()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "finished" and info["environment"]["torch"] == torch.__version__
    assert ckpt.list_steps(run / "checkpoints") == [25, 50]  # best (25 or 50) + last


def test_budget_in_tokens_and_seconds(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    tiny_cfg.train.max_steps, tiny_cfg.train.max_tokens = None, 8 * 32 * 7
    assert train(tiny_cfg, None).state.step == 7
    tiny_cfg.train.max_tokens, tiny_cfg.train.max_seconds = None, 0.5
    res = train(tiny_cfg, None)
    assert res.state.train_seconds >= 0.5 and res.state.step > 1


def test_existing_run_dir_is_not_overwritten(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    run = tmp_path / "run"
    train(tiny_cfg, run)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(SteplabError, match="already holds a run; pass --resume"):
        train(tiny_cfg, run)
    assert (run / "metrics.jsonl").read_text() == before


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, s, state, record) -> None:  # noqa: ANN001
        if state.step == self.step:
            raise StopTraining


def test_stop_and_resume_is_exact(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    tiny_cfg.model.dropout = 0.1  # the RNG state must be restored too
    full = train(tiny_cfg, tmp_path / "full")
    stopped = train(tiny_cfg, tmp_path / "part", callbacks=[StopAt(30)])
    assert stopped.status == "stopped" and stopped.state.step == 30
    resumed = train(tiny_cfg, tmp_path / "part", resume=True)
    assert resumed.state.step == 50
    assert resumed.final["val_loss"] == full.final["val_loss"]
    a = ckpt.load(ckpt.latest(tmp_path / "full")).weights
    b = ckpt.load(ckpt.latest(tmp_path / "part")).weights
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(run: Path) -> list:
        return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")]

    assert losses(tmp_path / "part") == losses(tmp_path / "full")


def test_eval_window_fixes_the_measure(tiny_cfg: RunConfig) -> None:
    tiny_cfg.eval.window = 16
    s = build(tiny_cfg)
    assert s.val[0].shape[1] == 16
    tiny_cfg.eval.window = 64
    with pytest.raises(SteplabError, match="--eval.window"):
        build(tiny_cfg)


def test_bf16_autocast_run_learns_and_resumes_exactly(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    """The CPU default with native bf16 GEMMs: bf16 autocast with float32 weights and optimizer state."""
    cfg = tiny_cfg
    cfg.train.dtype = "bfloat16"
    cfg.train.max_steps, cfg.train.log_every, cfg.eval.every = 40, 10, 0
    cfg.schedule.name = "constant"
    full = train(cfg, tmp_path / "full")
    losses = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    assert losses[-1] < losses[0] - 0.3, losses
    assert all(p.dtype == torch.float32 for p in build(cfg).model.parameters())
    cfg.train.max_steps = 20
    train(cfg, tmp_path / "part")
    cfg.train.max_steps = 40
    resumed = train(cfg, tmp_path / "part", resume=True)
    assert resumed.final["val_loss"] == full.final["val_loss"]


def test_auto_dtype_is_bf16_on_cuda_and_bf16_gemm_cpus_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from steplab import runtime
    from steplab.config import TrainConfig

    auto = TrainConfig()
    assert runtime.autocast_dtype(auto, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_bf16_gemm", lambda: True)
    assert runtime.autocast_dtype(auto, torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_has_bf16_gemm", lambda: False)
    assert runtime.autocast_dtype(auto, torch.device("cpu")) is None
    assert runtime.autocast_dtype(TrainConfig(dtype="bfloat16"), torch.device("cpu")) == torch.bfloat16
