"""The optimizer registry: a builder per name, the default learning rates, and the checks.

Every builder takes ``(groups, cfg, device)`` and returns one `torch.optim.Optimizer`, so the
loop, checkpoints and `set_lr` treat them all alike. Muon is two optimizers (Muon for the
hidden matrices, AdamW for the rest) behind one `Chain`; schedule-free AdamW keeps two
points and must be switched to its averaged point around evaluation and checkpoints
(`eval_mode`).

Weight decay: where the torch optimizer has only L2-coupled decay (Adam, Adagrad, RMSprop),
decay is switched off rather than silently turned into an L2 penalty that the adaptive
denominator would rescale; use `adamw` for decoupled decay. SGD keeps it (for SGD, L2 and
decoupled decay coincide up to the learning rate). A setting the chosen optimizer ignores
draws one warning (`ignored_settings`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from steplab.config import ModelConfig, OptimConfig, flag
from steplab.errors import ConfigError, IgnoredSettingWarning
from steplab.optim.chain import Chain
from steplab.optim.groups import Groups, param_groups
from steplab.optim.muon import Muon, split_for_muon

# --- builders -------------------------------------------------------------------------------


def _fast_kwargs(device: torch.device, *, fused: bool = True) -> dict[str, Any]:
    """Fused kernels where torch has them (CUDA and CPU), else foreach (one multi-tensor op
    per group). On CPU too: torch >= 2.4 has fused Adam, AdamW, SGD and Adagrad kernels there."""
    return {"fused": True} if (fused and device.type in ("cuda", "cpu")) else {"foreach": True}


def _initial_lr(cfg: OptimConfig) -> float:
    return cfg.lr if isinstance(cfg.lr, float) else 1e-3


def _no_decay(groups: Groups) -> Groups:
    """For optimizers whose weight decay is an L2 term in the gradient (see the module doc)."""
    for g in groups:
        g["weight_decay"] = 0.0
    return groups


def build_adamw(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        groups, lr=_initial_lr(cfg), betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **_fast_kwargs(device)
    )


def build_adam(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.Adam(
        _no_decay(groups),
        lr=_initial_lr(cfg),
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        **_fast_kwargs(device),
    )


def build_sgd(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        groups,
        lr=_initial_lr(cfg),
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        **_fast_kwargs(device),
    )


def build_adagrad(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    # torch's fused Adagrad is CPU-only: foreach elsewhere.
    fast = {"fused": True} if device.type == "cpu" else {"foreach": True}
    return torch.optim.Adagrad(_no_decay(groups), lr=_initial_lr(cfg), eps=cfg.eps, **fast)


def build_rmsprop(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """RMSprop with `beta2` as its smoothing constant (torch's `alpha`) and no momentum.

    Without bias correction the first steps divide by a tiny running mean: the warm-up
    of the schedule is what keeps them small.
    """
    return torch.optim.RMSprop(
        _no_decay(groups), lr=_initial_lr(cfg), alpha=cfg.beta2, eps=cfg.eps, momentum=0.0, foreach=True
    )


def build_lion(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Lion (Chen et al. 2023): the sign of an interpolated momentum, decoupled weight decay.

    Every coordinate moves by exactly lr per step, so its learning rate is 3-10x below AdamW's.
    """
    from pytorch_optimizer import Lion

    return Lion(groups, lr=_initial_lr(cfg), betas=(cfg.beta1, cfg.beta2), weight_decouple=True)


def build_muon(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """torch's Muon on the hidden matrices, AdamW on embeddings, head, norms and biases.

    Muon scales its orthogonalised update with ``adjust_lr_fn="match_rms_adamw"`` (Moonshot's
    0.2 * sqrt(max(A, B))), which gives it AdamW's update size per element: one peak learning
    rate and one weight decay serve both halves, and `set_lr` needs no special case. Muon's
    momentum is `--optim.momentum`, always with Nesterov.
    """
    muon_groups, adam_groups = split_for_muon(groups)
    lr = _initial_lr(cfg)
    parts: list[torch.optim.Optimizer] = []
    if muon_groups:
        parts.append(
            Muon(muon_groups, lr=lr, momentum=cfg.momentum, nesterov=True, adjust_lr_fn="match_rms_adamw")
        )
    if adam_groups:
        parts.append(build_adamw(adam_groups, cfg, device))
    return Chain(*parts)


def build_schedulefree_adamw(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """Schedule-free AdamW (Defazio et al. 2024): no decay schedule needed, only warm-up.

    Use it with ``--schedule constant`` (its warm-up comes from the schedule); the loop switches
    it to its averaged weights for evaluation and checkpoints (`eval_mode`).
    """
    from schedulefree import AdamWScheduleFree

    opt = AdamWScheduleFree(
        groups, lr=_initial_lr(cfg), betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, warmup_steps=0, foreach=True
    )
    opt.train()
    return opt


def build_adafactor(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """torch's Adafactor: factored second moments (row and column means), decoupled decay.

    Its step is relative to each parameter's RMS, and `lr` caps the relative step size.
    """
    return torch.optim.Adafactor(groups, lr=_initial_lr(cfg), foreach=True)


def build_soap(groups: Groups, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """SOAP (Vyas et al. 2024): Adam in the eigenbasis of Shampoo's preconditioner.

    A second-order method: per matrix it keeps two Kronecker factors and their eigenvectors,
    refreshed every 10 steps. Its first step only initialises the preconditioner (no update).
    Matrices larger than 10000 on a side (a big vocabulary) fall back to Adam on that side.
    """
    from pytorch_optimizer import SOAP

    return SOAP(
        groups, lr=_initial_lr(cfg), betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, precondition_frequency=10
    )


Builder = Callable[[Groups, OptimConfig, torch.device], torch.optim.Optimizer]

OPTIMIZERS: dict[str, Builder] = {
    "adamw": build_adamw,
    "adam": build_adam,
    "sgd": build_sgd,
    "adagrad": build_adagrad,
    "rmsprop": build_rmsprop,
    "lion": build_lion,
    "muon": build_muon,
    "schedulefree_adamw": build_schedulefree_adamw,
    "adafactor": build_adafactor,
    "soap": build_soap,
}

# The peak learning rate each optimizer gets when the user sets none (`steplab compare`).
# From benchmarks/lr_sweep.sh on the shakespeare_char model (4 x 128, cosine): the best of a
# 1000-step sweep for adamw, muon, lion, sgd, adagrad and rmsprop, of a 300-step sweep for
# the others; within 0.01 nats the smaller lr. Figures and commands: docs/optimizers.md.
DEFAULT_LR: dict[str, float] = {
    "adamw": 3e-3,
    "adam": 3e-3,
    "sgd": 0.1,
    "adagrad": 1e-2,  # 3e-2 (best at 300 steps) diverged over 120 s budgets: docs/optimizers.md
    "rmsprop": 3e-3,
    "lion": 1e-3,
    "muon": 1e-2,
    "schedulefree_adamw": 1e-2,
    "adafactor": 0.1,
    "soap": 1e-2,
}


# What each optimizer does not use, and why. Set to anything but its neutral value (0 for
# weight decay, the default for the rest), such a setting draws a warning: a flag that
# changes nothing must say so.
_L2 = "torch's decay there is an L2 term the adaptive denominator rescales, so it is off; use adamw"
_SGD_ONLY = {"nesterov": "Nesterov momentum is an sgd and muon setting"}
_BETAS_ARE_MOMENTUM = {"momentum": "its momentum is --optim.beta1", **_SGD_ONLY}
IGNORES: dict[str, dict[str, str]] = {
    "adamw": _BETAS_ARE_MOMENTUM,
    "adam": {"weight_decay": _L2, **_BETAS_ARE_MOMENTUM},
    "sgd": {
        "beta1": "sgd keeps no moment estimates; its momentum is --optim.momentum",
        "beta2": "sgd keeps no second moment",
        "eps": "sgd divides by nothing",
    },
    "adagrad": {
        "weight_decay": _L2,
        "beta1": "adagrad keeps no first moment",
        "beta2": "adagrad sums squared gradients instead of averaging them",
        "momentum": "adagrad has no momentum",
        **_SGD_ONLY,
    },
    "rmsprop": {
        "weight_decay": _L2,
        "beta1": "rmsprop runs without momentum; --optim.beta2 is its smoothing constant",
        "momentum": "rmsprop runs without momentum",
        **_SGD_ONLY,
    },
    "lion": {
        "eps": "a sign update has no denominator",
        "momentum": "lion's momentum is --optim.beta1 and --optim.beta2",
        **_SGD_ONLY,
    },
    "muon": {"nesterov": "muon always uses Nesterov momentum"},
    "schedulefree_adamw": _BETAS_ARE_MOMENTUM,
    "adafactor": {
        "beta1": "adafactor keeps no first moment",
        "beta2": "adafactor's second-moment decay follows torch's fixed schedule",
        "eps": "adafactor uses torch's own epsilons",
        "momentum": "adafactor has no momentum",
        **_SGD_ONLY,
    },
    "soap": _BETAS_ARE_MOMENTUM,
}


def ignored_settings(cfg: OptimConfig) -> list[str]:
    """One message per setting that `cfg.name`'s optimizer ignores while it is set to matter."""
    defaults = OptimConfig()
    out = []
    for name, why in IGNORES.get(cfg.name, {}).items():
        value = getattr(cfg, name)
        if value != (0.0 if name == "weight_decay" else getattr(defaults, name)):
            out.append(f"{flag('optim', name)} {_show(value)} is ignored by {cfg.name} ({why})")
    if cfg.name == "sgd" and cfg.nesterov and cfg.momentum == 0:
        out.append(
            "--optim.nesterov true is ignored by sgd with --optim.momentum 0 (nothing to look ahead with)"
        )
    return out


def _show(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device, model_cfg: ModelConfig | None = None
) -> torch.optim.Optimizer:
    """The configured optimizer over `param_groups(model, cfg)`."""
    groups = param_groups(model, cfg, model_cfg)
    check_name(cfg.name)
    for message in ignored_settings(cfg):
        warnings.warn(message, IgnoredSettingWarning, stacklevel=2)
    opt = OPTIMIZERS[cfg.name](groups, cfg, device)
    for g in opt.param_groups:
        g.setdefault("lr_mult", 1.0)
    return opt


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Apply a peak-times-schedule learning rate to every group, with its multiplier."""
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of tensors the optimizer keeps per parameter (momenta, second moments, factors)."""

    def size(v: Any) -> int:
        if isinstance(v, torch.Tensor):
            return v.numel() * v.element_size()
        if isinstance(v, (list, tuple)):
            return sum(size(x) for x in v)
        if isinstance(v, dict):
            return sum(size(x) for x in v.values())
        return 0

    return sum(size(s) for s in opt.state.values())


def check_name(name: str) -> None:
    """An unknown optimizer is a `ConfigError` that lists the registered ones."""
    if name not in OPTIMIZERS:
        raise ConfigError(
            f"--optim.name: unknown optimizer {name!r} (valid: {', '.join(sorted(OPTIMIZERS))})"
        )
