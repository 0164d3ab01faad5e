"""The divergence guard: the rule, the skipped update, and faults injected into real tiny runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from steplab import checkpoint as ckpt
from steplab.checkpoint import TrainState
from steplab.config import GuardConfig, RunConfig
from steplab.data.batches import BatchSampler
from steplab.errors import ConfigError
from steplab.loop.fit import train
from steplab.loop.guard import Guard, ceiling, spike_threshold, update_stats, verdict
from steplab.loop.hooks import Callback
from steplab.loop.session import Session, build
from steplab.loop.step import train_step
from steplab.rundir import read_metrics


def test_moving_statistics_and_the_spike_rule() -> None:
    cfg = GuardConfig(spike_sigma=3.0, spike_rise=0.1, spike_decay=0.5, spike_warmup=2)
    mean, var = update_stats(0.0, 0.0, 0, 4.0, 0.5)
    assert (mean, var) == (4.0, 0.0)  # the first value starts the statistics
    mean, var = update_stats(mean, var, 1, 2.0, 0.5)
    assert mean == 3.0 and var == pytest.approx(0.5 * (0 + 0.5 * 4.0))
    # both margins must be exceeded: 3 std (3 + 3 = 6) and 10% (3.3)
    assert spike_threshold(3.0, 1.0, cfg) == 6.0
    assert spike_threshold(3.0, 0.0, cfg) == pytest.approx(3.3)
    st = {"mean": 3.0, "var": 1.0, "accepted": 2}
    assert verdict(5.9, 1.0, st, cfg)[0] is None
    assert verdict(6.1, 1.0, st, cfg)[0] == "loss spike"
    assert verdict(math.nan, 1.0, st, cfg)[0] == "non-finite loss"
    assert verdict(2.0, math.inf, st, cfg)[0] == "non-finite gradient"
    assert verdict(100.0, 1.0, {**st, "accepted": 1}, cfg)[0] is None  # spikes only after the warm-up


def test_a_refused_step_changes_nothing(tiny_cfg: RunConfig) -> None:
    s = build(tiny_cfg)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    seen = []
    out = train_step(
        s.model,
        s.optimizer,
        s.micro_batches(0),
        grad_clip=1.0,
        check=lambda loss, g: seen.append(loss) or False,
    )
    assert not out.applied and len(seen) == 1 and torch.isfinite(seen[0])
    assert all(torch.equal(before[k], v) for k, v in s.model.state_dict().items())
    assert not s.optimizer.state  # no moments, no step count
    assert all(p.grad is None for p in s.model.parameters())


def poison(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """Batch `index` gets targets that are all one rare token (garbage data)."""
    original = BatchSampler.batch_at

    def batch_at(self: BatchSampler, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = original(self, i)
        return (x, torch.full_like(y, int(self.data.max()))) if i == index else (x, y)

    monkeypatch.setattr(BatchSampler, "batch_at", batch_at)


def lr_fault(monkeypatch: pytest.MonkeyPatch, steps: range, factor: float) -> None:
    """Multiply the learning rate by `factor` on these calls of set_lr (one per step), once."""
    import steplab.loop.fit

    original = steplab.loop.fit.set_lr
    calls = [0]

    def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
        calls[0] += 1
        original(opt, lr * factor if calls[0] in steps else lr)

    monkeypatch.setattr(steplab.loop.fit, "set_lr", set_lr)


def events(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if "event" in r]


def test_skip_drops_a_poisoned_batch_and_finishes_close_to_clean(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    clean = train(tiny_cfg, tmp_path / "clean")
    poison(monkeypatch, 35)
    run = tmp_path / "poisoned"
    result = train(tiny_cfg, run)
    (event,) = events(run)
    assert event["step"] == 36 and event["action"] == "skip" and event["reason"] == "loss spike"
    assert event["flagged_loss"] > event["threshold"]
    assert result.status == "finished" and result.state.step == 50
    assert abs(result.final["val_loss"] - clean.final["val_loss"]) < 0.02


def test_without_the_guard_the_poisoned_batch_lands(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: the same fault is not harmless on its own."""
    tiny_cfg.guard.policy = "off"
    clean = train(tiny_cfg, None)
    poison(monkeypatch, 35)
    hit = train(tiny_cfg, None)
    assert hit.final["val_loss"] != clean.final["val_loss"]


def test_rollback_recovers_from_a_learning_rate_spike(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_cfg.train.max_steps, tiny_cfg.checkpoint.every = 80, 10
    tiny_cfg.guard.policy = "rollback"
    clean = train(tiny_cfg, tmp_path / "clean")
    lr_fault(monkeypatch, range(41, 43), 1000.0)  # step 41 lands at 1000x the learning rate (42 is caught)
    run = tmp_path / "faulty"
    result = train(tiny_cfg, run)
    (first,) = events(run)
    assert first["action"] == "rollback" and first["reason"] == "loss spike" and first["step"] == 42
    assert (
        first["to_step"] == 40 and first["lr_scale"] == 0.5 and first["skipped_batches"] == first["step"] - 40
    )
    assert result.status == "finished" and result.state.step == 80
    assert result.state.guard["data_offset"] > 0 and result.state.guard["lr_scale"] < 1
    assert math.isfinite(result.final["val_loss"])
    assert abs(result.final["val_loss"] - clean.final["val_loss"]) < 0.1, (
        result.final,
        clean.final,
        events(run),
    )
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert steps == sorted(set(steps))  # the abandoned steps' records were dropped, not duplicated
    assert max(ckpt.list_steps(run / "checkpoints")) == 80


def test_skip_gives_up_when_the_weights_are_broken(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_cfg.guard.max_attempts = 3
    lr_fault(monkeypatch, range(31, 32), math.inf)  # one step at an infinite learning rate
    run = tmp_path / "run"
    result = train(tiny_cfg, run)
    assert result.status == "diverged"
    actions = [e["action"] for e in events(run)]
    assert actions == ["skip", "skip", "skip", "give_up"]
    err = capsys.readouterr().err
    assert (
        "divergence guard gave up: non-finite loss at step 35" in err
        and "after 3 consecutive skipped steps" in err
    )


def test_rollback_gives_up_after_max_attempts(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_cfg.checkpoint.every, tiny_cfg.guard.policy, tiny_cfg.guard.max_attempts = 10, "rollback", 2
    lr_fault(monkeypatch, range(31, 10_000), math.inf)  # a fault that never goes away
    run = tmp_path / "run"
    result = train(tiny_cfg, run)
    assert result.status == "diverged"
    assert [e["action"] for e in events(run)] == ["rollback", "rollback", "give_up"]
    # each attempt goes one checkpoint further back (25: the best checkpoint, from the eval at 25)
    assert [e.get("to_step") for e in events(run)][:2] == [30, 25]


def test_stop_policy_and_rollback_needs_a_run_dir(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_cfg.guard.policy = "stop"
    poison(monkeypatch, 35)
    result = train(tiny_cfg, tmp_path / "run")
    assert result.status == "diverged" and result.state.step == 35
    assert [e["action"] for e in events(tmp_path / "run")] == ["stop"]
    tiny_cfg.guard.policy = "rollback"
    with pytest.raises(ConfigError, match="needs a run directory"):
        train(tiny_cfg, None)


def test_guard_state_round_trips_through_a_checkpoint(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    result = train(tiny_cfg, tmp_path / "run")
    saved = ckpt.load(ckpt.latest(tmp_path / "run")).state
    assert saved.guard == result.state.guard and saved.guard["accepted"] == 50
    g = Guard(tiny_cfg.guard, TrainState(guard=dict(saved.guard)), can_rollback=False)
    assert g.st["mean"] == pytest.approx(result.state.guard["mean"])


def test_with_the_guard_off_a_nan_stops_at_the_next_log_step(
    tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_cfg.guard.policy = "off"  # no per-step check: the loop only looks at the loss on log steps
    lr_fault(monkeypatch, range(31, 32), math.inf)
    result = train(tiny_cfg, None)
    assert result.status == "diverged" and result.state.step == 40
    assert "loss is nan at step 40: the run diverged" in capsys.readouterr().err


def test_the_ceiling_rule_is_a_multiple_of_the_uniform_guess() -> None:
    cfg = GuardConfig()
    assert ceiling(65, cfg) == pytest.approx(1.5 * math.log(65))
    assert ceiling(65, GuardConfig(loss_ceiling=0)) == math.inf  # off
    st = {"mean": 0.0, "var": 0.0, "accepted": 0}  # the first step: no statistics yet
    limit = ceiling(65, cfg)
    assert verdict(4.2, 1.0, st, cfg, limit=limit) == (None, pytest.approx(math.nan, nan_ok=True))
    assert verdict(limit + 0.01, 1.0, st, cfg, limit=limit) == ("loss above the ceiling", limit)
    # once the spike rule is active, a spike is named as such even above the ceiling
    active = {"mean": 3.0, "var": 0.01, "accepted": 20}
    assert verdict(limit + 1, 1.0, active, cfg, limit=limit)[0] == "loss spike"
    with pytest.raises(ConfigError, match="--guard.loss-ceiling must be 0 \\(off\\) or above 1"):
        RunConfig(guard=GuardConfig(loss_ceiling=0.9)).validate()


def test_a_run_that_blows_up_from_the_start_is_caught(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    """The issue's case: lr 10 climbed to a loss of 30,000 and finished with no guard event."""
    tiny_cfg.train.max_steps, tiny_cfg.optim.lr = 60, 10.0
    result = train(tiny_cfg, tmp_path / "skip")
    assert result.status == "diverged"
    evs = events(tmp_path / "skip")
    assert [e["action"] for e in evs] == ["skip"] * 5 + ["give_up"]
    limit = 1.5 * math.log(65)
    assert evs[0]["step"] <= 3 and all(e["reason"] == "loss above the ceiling" for e in evs)
    assert all(e["threshold"] == pytest.approx(limit) and e["flagged_loss"] > limit for e in evs)
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert (
        summary["status"] == "diverged"
        and json.loads((tmp_path / "skip" / "run.json").read_text())["status"] == "diverged"
    )


def test_rollback_from_the_start_uses_every_attempt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`steplab train --preset tiny --train.max-steps 60 --optim.lr 10 --guard.policy rollback`:
    five rollbacks (all to the step-0 checkpoint, the only one there is), then it gives up: exit 1."""
    from steplab.cli.main import main

    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--train.max-steps", "60", "--optim.lr", "10"]
    argv += [
        "--guard.policy",
        "rollback",
        "--quiet",
        "--train.tensorboard",
        "false",
        "--train.dtype",
        "float32",
    ]
    assert main([*argv, "--run-dir", str(run)]) == 1
    evs = events(run)
    assert [e["action"] for e in evs] == ["rollback"] * 5 + ["give_up"]
    assert [e["to_step"] for e in evs[:5]] == [0] * 5
    assert [e["lr_scale"] for e in evs[:5]] == [0.5, 0.25, 0.125, 0.0625, 0.03125]
    assert "divergence guard gave up" in capsys.readouterr().err
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"


def test_rollback_keeps_a_checkpoint_for_every_attempt(
    tmp_path: Path, tiny_cfg: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """keep-last 2, but 4 attempts allowed: each goes one checkpoint further back (it used to
    give up after 2, "no checkpoint at or before step 41 left")."""
    tiny_cfg.checkpoint.every, tiny_cfg.checkpoint.keep_last, tiny_cfg.checkpoint.keep_best = 10, 2, False
    tiny_cfg.guard.policy, tiny_cfg.guard.max_attempts = "rollback", 4
    lr_fault(monkeypatch, range(41, 10_000), math.inf)  # a fault that never goes away
    run = tmp_path / "run"
    result = train(tiny_cfg, run)
    assert result.status == "diverged"
    evs = events(run)
    assert [e["action"] for e in evs] == ["rollback"] * 4 + ["give_up"]
    # one further back each time (counted from the newest at or before the faulty step), then the oldest
    assert [e["to_step"] for e in evs[:4]] == [40, 30, 10, 10]


def test_rollback_reserve_is_pruned_when_the_run_ends(tmp_path: Path, tiny_cfg: RunConfig) -> None:
    tiny_cfg.checkpoint.every, tiny_cfg.checkpoint.keep_best = 10, False
    tiny_cfg.guard.policy = "rollback"
    seen: list[list[int]] = []

    class Watch(Callback):
        def on_log(self, s: Session, state: TrainState, record: dict) -> None:
            seen.append(ckpt.list_steps(tmp_path / "run" / "checkpoints"))

    train(tiny_cfg, tmp_path / "run", callbacks=[Watch()])
    assert seen[-1] == [0, 10, 20, 30, 40]  # at step 50: the newest max_attempts (5) and step 0
    assert ckpt.list_steps(tmp_path / "run" / "checkpoints") == [40, 50]  # keep-last 2 at the end


def test_a_finished_run_worse_than_the_ceiling_is_diverged_with_the_guard_off(
    tiny_cfg: RunConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_cfg.guard.policy, tiny_cfg.optim.lr, tiny_cfg.train.max_steps = "off", 3.0, 60
    result = train(tiny_cfg, None)
    assert result.status == "diverged" and result.final["val_loss"] > 1.5 * math.log(65)
    assert "is above the ceiling" in capsys.readouterr().err
