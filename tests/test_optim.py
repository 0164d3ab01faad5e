"""Optimizer conformance: every registered optimizer learns, resumes exactly, is deterministic for
a seed and honours the parameter groups; Muon's split and schedule-free's modes work in the loop."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.config import OptimConfig, RunConfig
from steplab.errors import IgnoredSettingWarning
from steplab.evaluate import mean_loss
from steplab.loop.fit import train
from steplab.loop.hooks import Callback, StopTraining
from steplab.loop.session import Session, build
from steplab.loop.step import train_step
from steplab.model import GPT
from steplab.optim import (
    DEFAULT_LR,
    IGNORES,
    OPTIMIZERS,
    Chain,
    Muon,
    build_optimizer,
    eval_mode,
    ignored_settings,
    lr_scale,
    newton_schulz,
    param_groups,
    set_lr,
    split_for_muon,
    state_bytes,
    train_mode,
)

NAMES = sorted(OPTIMIZERS)
# Optimizers whose weight decay is decoupled (the rest have L2-coupled decay, switched off).
DECAYING = {"adamw", "sgd", "lion", "muon", "schedulefree_adamw", "adafactor", "soap"}


def session(cfg: RunConfig, name: str, **optim: float) -> Session:
    cfg.optim.name, cfg.optim.lr = name, DEFAULT_LR[name]
    for k, v in optim.items():
        setattr(cfg.optim, k, v)
    return build(cfg)


def run(s: Session, steps: int, start: int = 0) -> list[float]:
    """`steps` loop steps from `start`: schedule, then the shared train step."""
    losses = []
    for step in range(start, start + steps):
        set_lr(s.optimizer, s.peak_lr * s.schedule(step, step / 40))
        out = train_step(s.model, s.optimizer, s.micro_batches(step), grad_clip=1.0)
        losses.append(out.loss.item())
    return losses


def test_registry_has_every_family_and_a_default_lr() -> None:
    assert {"sgd", "adagrad", "rmsprop", "adam", "adamw", "lion", "muon"} <= set(OPTIMIZERS)
    assert {"schedulefree_adamw", "adafactor", "soap"} <= set(OPTIMIZERS)
    assert set(DEFAULT_LR) == set(OPTIMIZERS) and all(v > 0 for v in DEFAULT_LR.values())


@pytest.mark.parametrize("name", NAMES)
def test_lowers_the_loss_of_a_tiny_model(name: str, tiny_cfg: RunConfig) -> None:
    losses = run(session(tiny_cfg, name), 40)
    assert all(torch.isfinite(torch.tensor(losses)))
    start, end = losses[0], sum(losses[-5:]) / 5
    assert end < start - 0.4, (name, start, end)  # from ln(65) = 4.17 at step 0


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_gives_the_same_next_step(name: str, tiny_cfg: RunConfig) -> None:
    a = session(tiny_cfg, name)
    run(a, 12)  # past SOAP's first preconditioner refresh (every 10 steps)
    buf = io.BytesIO()
    with eval_mode(a.optimizer):  # as the loop saves a checkpoint
        torch.save({"model": a.model.state_dict(), "optim": a.optimizer.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # what checkpoint.load accepts
    b = build(a.cfg)
    b.model.load_state_dict(saved["model"])
    b.optimizer.load_state_dict(saved["optim"])
    train_mode(b.optimizer)  # as restore() does
    assert run(a, 2, start=12) == run(b, 2, start=12)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert state_bytes(b.optimizer) == state_bytes(a.optimizer) > 0


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_for_a_seed(name: str, tiny_cfg: RunConfig) -> None:
    first = run(session(tiny_cfg, name), 6)
    assert run(session(tiny_cfg, name), 6) == first
    tiny_cfg.train.seed += 1
    assert run(session(tiny_cfg, name), 6) != first


def _zero_grad_steps(s: Session, steps: int) -> None:
    for _ in range(steps):
        set_lr(s.optimizer, s.peak_lr)
        for p in s.model.parameters():
            p.grad = torch.zeros_like(p)
        s.optimizer.step()


@pytest.mark.filterwarnings("ignore::steplab.errors.IgnoredSettingWarning")  # adam & co. ignore it: tested
@pytest.mark.parametrize("name", NAMES)
def test_weight_decay_only_on_matrices(name: str, tiny_cfg: RunConfig) -> None:
    tiny_cfg.model.tie_embeddings = False
    s = session(tiny_cfg, name, weight_decay=0.5)
    groups = {
        g["name"]: [p.detach().clone() for p in g["params"]] for g in param_groups(s.model, s.cfg.optim)
    }
    _zero_grad_steps(s, 3)  # a zero gradient leaves only the decay to move anything
    now = {g["name"]: g["params"] for g in param_groups(s.model, s.cfg.optim)}
    for group in ("vector", "embed"):
        assert all(torch.equal(a, b) for a, b in zip(groups[group], now[group], strict=True)), group
    shrunk = [b.norm() < a.norm() for a, b in zip(groups["matrix"], now["matrix"], strict=True)]
    assert all(shrunk) if name in DECAYING else not any(shrunk)


@pytest.mark.parametrize("name", NAMES)
def test_lr_multipliers_scale_only_their_group(name: str, tiny_cfg: RunConfig) -> None:
    tiny_cfg.model.tie_embeddings = False

    def moved(embed_mult: float, head_mult: float) -> dict[str, list[torch.Tensor]]:
        s = session(tiny_cfg, name, weight_decay=0.0, embed_lr_mult=embed_mult, head_lr_mult=head_mult)
        start = {n: p.detach().clone() for n, p in s.model.named_parameters()}
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):  # fixed gradients: each parameter's path depends on its own lr only
            set_lr(s.optimizer, s.peak_lr)
            for p in s.model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            s.optimizer.step()
        out: dict[str, list[torch.Tensor]] = {}
        for n, p in s.model.named_parameters():
            key = "embed" if n.startswith(("wte", "wpe")) else "head" if n.startswith("lm_head") else "rest"
            out.setdefault(key, []).append(p.detach() - start[n])
        return out

    base, scaled = moved(1.0, 1.0), moved(0.25, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(base["rest"], scaled["rest"], strict=True))
    for key, mult in (("embed", 0.25), ("head", 0.5)):
        for a, b in zip(base[key], scaled[key], strict=True):
            ratio = float(b.norm() / a.norm())
            assert ratio == pytest.approx(mult, rel=0.15), (key, ratio)


def test_muon_splits_hidden_matrices_from_the_rest(tiny_cfg: RunConfig) -> None:
    tiny_cfg.model.vocab_size, tiny_cfg.model.tie_embeddings = 20, False
    model = GPT(tiny_cfg.model)
    muon, adam = split_for_muon(param_groups(model, tiny_cfg.optim))
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)} - {
        id(model.lm_head.weight)
    }
    assert {id(p) for g in muon for p in g["params"]} == matrices
    assert {g["name"] for g in adam} == {"embed", "head", "vector"}
    tiny_cfg.optim.name = "muon"
    opt = build_optimizer(model, tiny_cfg.optim, torch.device("cpu"))
    assert isinstance(opt, Chain)
    assert [type(o).__name__ for o in opt.optimizers] == ["Muon", "AdamW"]
    set_lr(opt, 0.01)
    assert {g["name"]: g["lr"] for g in opt.param_groups}["matrix"] == 0.01


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, s, state, record) -> None:  # noqa: ANN001
        if state.step == self.step:
            raise StopTraining


@pytest.mark.parametrize("name", ["schedulefree_adamw", "muon"])
def test_loop_resume_is_exact_and_checkpoints_hold_the_evaluated_weights(
    name: str, tmp_path: Path, tiny_cfg: RunConfig
) -> None:
    tiny_cfg.optim.name, tiny_cfg.optim.lr = name, DEFAULT_LR[name]
    full = train(tiny_cfg, tmp_path / "full")
    assert train(tiny_cfg, tmp_path / "part", callbacks=[StopAt(30)]).status == "stopped"
    resumed = train(tiny_cfg, tmp_path / "part", resume=True)
    assert resumed.final["val_loss"] == full.final["val_loss"]
    # The saved weights are the ones evaluated (schedule-free: the average x, not the point y).
    loaded = ckpt.load(ckpt.latest(tmp_path / "part"))
    model = GPT(loaded.cfg.model)
    ckpt.load_weights(model, loaded.weights, loaded.path)
    s = build(loaded.cfg)
    loss = mean_loss(model, *s.val, batch_size=256, device=torch.device("cpu"))
    assert loss == pytest.approx(full.final["val_loss"], abs=1e-6)


def test_schedulefree_eval_mode_switches_weights_and_back(tiny_cfg: RunConfig) -> None:
    s = session(tiny_cfg, "schedulefree_adamw")
    run(s, 5)
    y = [p.detach().clone() for p in s.model.parameters()]
    with eval_mode(s.optimizer):
        x = [p.detach().clone() for p in s.model.parameters()]
    back = list(s.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(y, x, strict=True))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(y, back, strict=True))


def test_unknown_optimizer_is_one_line_listing_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "tiny", "--optim.name", "adamx"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown optimizer 'adamx'" in err
    assert all(n in err for n in OPTIMIZERS)


@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original", None])
def test_batched_muon_matches_torch_muon(adjust_lr_fn: str | None) -> None:
    """Same update as torch.optim.Muon, bit for bit, and the same state keys."""
    torch.manual_seed(0)
    shapes = [(48, 16), (48, 16), (16, 16), (16, 64), (16, 64)]
    ours = [torch.randn(*sh, requires_grad=True) for sh in shapes]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    kw = dict(lr=0.02, momentum=0.9, weight_decay=0.1, nesterov=True, adjust_lr_fn=adjust_lr_fn)
    a, b = Muon(ours, **kw), torch.optim.Muon(theirs, **kw)
    for _ in range(3):
        grads = [torch.randn(*sh) for sh in shapes]
        for p, q, g in zip(ours, theirs, grads, strict=True):
            p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs, strict=True):
        assert torch.equal(p, q), (p - q).abs().max()
    assert a.state_dict()["state"].keys() == b.state_dict()["state"].keys()
    assert set(a.state_dict()["state"][0]) == set(b.state_dict()["state"][0]) == {"momentum_buffer"}


def test_muon_lr_scale_is_the_documented_formula() -> None:
    """torch.optim.Muon's docs: sqrt(max(1, A/B)) ("original", the default), 0.2 sqrt(max(A, B))."""
    assert lr_scale(None, (64, 16)) == lr_scale("original", (64, 16)) == 2.0
    assert lr_scale("original", (16, 64)) == 1.0  # wide matrices are not scaled down
    assert lr_scale("match_rms_adamw", (16, 64)) == lr_scale("match_rms_adamw", (64, 16)) == 0.2 * 8
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        lr_scale("other", (4, 4))


def test_muon_update_rms_matches_adamw_under_match_rms_adamw() -> None:
    """What the scale is for: an orthogonalised update times 0.2 sqrt(max(A, B)) has RMS 0.2,
    AdamW's typical update RMS, whatever the shape (so one lr serves both halves of the chain)."""
    for shape in [(32, 128), (128, 32), (64, 64)]:
        ortho = newton_schulz(torch.randn(1, *shape), (3.4445, -4.775, 2.0315), 5, 1e-7).float()
        rms = (ortho * lr_scale("match_rms_adamw", shape)).pow(2).mean().sqrt().item()
        assert rms == pytest.approx(0.2, rel=0.25), (shape, rms)


def _messages(**settings: object) -> list[str]:
    cfg = OptimConfig()
    for k, v in settings.items():
        setattr(cfg, k, v)
    return ignored_settings(cfg)


def test_a_setting_the_optimizer_ignores_is_named_with_the_reason() -> None:
    (msg,) = _messages(name="adam", weight_decay=0.1)
    assert msg.startswith("--optim.weight-decay 0.1 is ignored by adam (") and "use adamw" in msg
    for name in ("adagrad", "rmsprop"):
        assert any(
            m.startswith(f"--optim.weight-decay 0.1 is ignored by {name}") for m in _messages(name=name)
        )
    assert _messages(name="adam", weight_decay=0.0) == []  # nothing to ignore
    assert _messages(name="adamw") == [] and _messages(name="sgd") == []  # defaults are never noise
    assert _messages(name="adamw", nesterov=True) == [
        "--optim.nesterov true is ignored by adamw (Nesterov momentum is an sgd and muon setting)"
    ]
    assert _messages(name="sgd", beta2=0.95)[0].startswith("--optim.beta2 0.95 is ignored by sgd")
    assert "momentum 0" in _messages(name="sgd", nesterov=True, momentum=0.0)[0]
    assert set(IGNORES) == set(OPTIMIZERS)  # every registered optimizer says what it ignores


def test_building_an_optimizer_warns_once_per_ignored_setting(tiny_cfg: RunConfig) -> None:
    tiny_cfg.model.vocab_size = 20
    tiny_cfg.optim.name, tiny_cfg.optim.weight_decay = "adam", 0.1
    with pytest.warns(IgnoredSettingWarning) as caught:
        build_optimizer(GPT(tiny_cfg.model), tiny_cfg.optim, torch.device("cpu"))
    assert [str(w.message).split(" (")[0] for w in caught] == ["--optim.weight-decay 0.1 is ignored by adam"]


def test_cli_prints_an_ignored_setting_as_one_warning_line(
    tmp_path: Path, small_corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--preset", "tiny", "--data", str(small_corpus), "--optim.name", "rmsprop"]
    argv += ["--train.max-steps", "2", "--eval.every", "0", "--run-dir", str(tmp_path / "r"), "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: --optim.weight-decay 0.1 is ignored by rmsprop (" in err
    assert err.count("is ignored by") == 1
