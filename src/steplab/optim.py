"""Optimizers: a registry keyed by name, and one parameter-grouping rule for all of them.

`param_groups` splits a model's parameters into named groups (hidden matrices, embeddings,
untied output head, vectors = norms and biases) with their weight decay and learning-rate
multiplier; every optimizer is built from those groups, so the rule lives in one place. The
training loop sets ``group["lr"] = peak_lr * schedule * group["lr_mult"]`` each step.

Every builder takes ``(groups, cfg, device)`` and returns one `torch.optim.Optimizer`, so the
loop, checkpoints and `set_lr` treat them all alike. Muon is two optimizers (Muon for the
hidden matrices, AdamW for the rest) behind one `Chain`; schedule-free AdamW keeps two
points and must be switched to its averaged point around evaluation and checkpoints
(`eval_mode`).

Weight decay: where the torch optimizer has only L2-coupled decay (Adam, Adagrad, RMSprop),
decay is switched off rather than silently turned into an L2 penalty that the adaptive
denominator would rescale; use `adamw` for decoupled decay. SGD keeps it (for SGD, L2 and
decoupled decay coincide up to the learning rate).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn as nn

from steplab.config import ModelConfig, OptimConfig
from steplab.errors import ConfigError

Groups = list[dict[str, Any]]


def param_groups(model: nn.Module, cfg: OptimConfig, model_cfg: ModelConfig | None = None) -> Groups:
    """Named parameter groups: no decay on vectors and (unless asked) embeddings.

    Under muP the groups' learning rates also scale with the width multiplier (see
    `mup_lr_mults`), so a learning rate tuned at the base width transfers.
    """
    buckets: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "head": [], "vector": []}
    for name, p in model.named_parameters():  # a tied weight appears once, under wte
        if not p.requires_grad:
            continue
        if name.startswith(("wte.", "wpe.")):
            buckets["embed"].append(p)
        elif name.startswith("lm_head."):
            buckets["head"].append(p)
        elif p.dim() < 2:
            buckets["vector"].append(p)
        else:
            buckets["matrix"].append(p)
    mup = {"matrix": 1.0, "embed": 1.0, "head": 1.0, "vector": 1.0}
    if model_cfg is not None and model_cfg.parametrization == "mup":
        mup = mup_lr_mults(cfg.name, model_cfg.n_embd / model_cfg.mup_base_width)
    settings = {
        "matrix": (cfg.weight_decay, mup["matrix"]),
        "embed": (cfg.weight_decay if cfg.decay_embeddings else 0.0, cfg.embed_lr_mult * mup["embed"]),
        "head": (cfg.weight_decay, cfg.head_lr_mult * mup["head"]),
        "vector": (0.0, mup["vector"]),
    }
    return [
        {"name": k, "params": ps, "weight_decay": settings[k][0], "lr_mult": settings[k][1]}
        for k, ps in buckets.items()
        if ps
    ]


# Which muP learning-rate rule an optimizer follows (Tensor Programs V, Table 8, with the
# output multiplier 1/m in the model): "adam" for updates whose size does not depend on the
# gradient's scale (Adam, AdamW, Lion, ...), "sgd" for updates proportional to the gradient.
MUP_RULE: dict[str, str] = {
    "adamw": "adam",
    "adam": "adam",
    "sgd": "sgd",
    "lion": "adam",  # sign updates: size independent of the gradient's scale
    "muon": "adam",  # orthogonalised updates, RMS matched to AdamW
    "schedulefree_adamw": "adam",
    "adafactor": "adam",
    "soap": "adam",
    "adagrad": "adam",
    "rmsprop": "adam",
}


def mup_lr_mults(optimizer: str, width_mult: float) -> dict[str, float]:
    """muP learning-rate multipliers per group for width multiplier m = n_embd / base width.

    Adam rule: hidden matrices 1/m, everything else 1 (embeddings, vectors, and the head,
    whose 1/m output multiplier already shrinks its effect). SGD rule: hidden matrices 1,
    embeddings, head and vectors m.
    """
    m = width_mult
    rule = MUP_RULE.get(optimizer)
    if rule is None:
        warnings.warn(
            f"muP has no learning-rate rule registered for optimizer {optimizer!r}; using the Adam rule "
            "(add it to steplab.optim.MUP_RULE)",
            stacklevel=2,
        )
        rule = "adam"
    if rule == "sgd":
        return {"matrix": 1.0, "embed": m, "head": m, "vector": m}
    return {"matrix": 1.0 / m, "embed": 1.0, "head": 1.0, "vector": 1.0}


def split_for_muon(groups: Groups) -> tuple[Groups, Groups]:
    """(Muon groups, AdamW groups): Muon orthogonalises the 2-D hidden matrices only.

    Embeddings are lookup tables (one row per token, not a linear map of the residual stream)
    and the head maps to a vocabulary; Muon's authors optimise both, plus norms and biases,
    with AdamW. The hidden matrices are exactly `param_groups`' "matrix" group.
    """
    muon = [g for g in groups if g["name"] == "matrix"]
    assert all(p.dim() == 2 for g in muon for p in g["params"]), "Muon takes 2-D matrices only"
    return muon, [g for g in groups if g["name"] != "matrix"]


class Chain(torch.optim.Optimizer):
    """Several optimizers over disjoint parameter groups, driven as one.

    `param_groups` is the children's groups in order (the same dicts, so `set_lr` reaches
    them), `state_dict` nests the children's, and `step`/`zero_grad` call each child.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:  # noqa: D107 - no super().__init__
        self.optimizers = list(optimizers)
        self.defaults: dict[str, Any] = {}

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]  # children's, live
        return [g for o in self.optimizers for g in o.param_groups]

    @property
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        return {p: s for o in self.optimizers for p, s in o.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self.optimizers:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"chain": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        parts = state_dict["chain"]  # KeyError for another optimizer's state: reported by restore()
        if len(parts) != len(self.optimizers):
            raise ValueError(f"state holds {len(parts)} optimizers, this chain has {len(self.optimizers)}")
        for o, sd in zip(self.optimizers, parts, strict=True):
            o.load_state_dict(sd)

    def __repr__(self) -> str:
        return f"Chain({', '.join(type(o).__name__ for o in self.optimizers)})"


# --- schedule-free optimizers keep two points: train at y, evaluate and save at x -------------


def has_modes(opt: torch.optim.Optimizer) -> bool:
    """Whether the optimizer has train/eval modes (schedule-free), directly or inside a Chain."""
    if isinstance(opt, Chain):
        return any(has_modes(o) for o in opt.optimizers)
    return callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))


def _each(opt: torch.optim.Optimizer) -> list[torch.optim.Optimizer]:
    return opt.optimizers if isinstance(opt, Chain) else [opt]


def train_mode(opt: torch.optim.Optimizer) -> None:
    """Put the weights at the point the optimizer steps from (a no-op for most optimizers)."""
    for o in _each(opt):
        if has_modes(o):
            o.train()  # type: ignore[attr-defined]


@contextmanager
def eval_mode(opt: torch.optim.Optimizer) -> Iterator[None]:
    """Evaluate and checkpoint the weights a schedule-free optimizer would return, then go back.

    Schedule-free AdamW trains at an interpolation y of its iterate z and the average x; the
    model to evaluate, sample and save is x. A no-op for optimizers without modes.
    """
    modal = [o for o in _each(opt) if has_modes(o)]
    for o in modal:
        o.eval()  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for o in modal:
            o.train()  # type: ignore[attr-defined]


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


class Muon(torch.optim.Muon):
    """torch's Muon with the Newton-Schulz iteration batched over same-shape matrices.

    The update is torch's (Nesterov momentum, 5 quintic Newton-Schulz steps in bf16, the
    `adjust_lr_fn` scale, decoupled weight decay) and so is the state (``momentum_buffer``),
    so checkpoints move freely between the two. torch orthogonalises one matrix at a time;
    here the matrices of one shape (the same projection in every layer) go through one stack
    of batched matmuls (`torch.baddbmm`), which on a 2-core CPU halves the optimizer's time
    at the speedrun's size (docs/speedrun.md). Sharded (FSDP2) parameters take torch's path.
    """

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        if any(hasattr(p, "device_mesh") for p in params):  # DTensor shards: not one matrix each
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            by_shape: dict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is not None:
                    ps, gs = by_shape.setdefault(tuple(p.shape), ([], []))
                    ps.append(p)
                    gs.append(p.grad)
            lr, wd, momentum = group["lr"], group["weight_decay"], group["momentum"]
            for shape, (ps, grads) in by_shape.items():
                for p in ps:
                    if "momentum_buffer" not in self.state[p]:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
                bufs = [self.state[p]["momentum_buffer"] for p in ps]
                torch._foreach_lerp_(bufs, grads, 1 - momentum)
                updates = torch._foreach_lerp(grads, bufs, momentum) if group["nesterov"] else bufs
                ortho = newton_schulz(
                    torch.stack(updates), group["ns_coefficients"], group["ns_steps"], group["eps"]
                )
                scale = torch.optim._muon._adjust_lr(lr, group["adjust_lr_fn"], torch.Size(shape))
                if wd:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                torch._foreach_add_(ps, list(ortho.to(ps[0].dtype).unbind(0)), alpha=-scale)
        return loss


def newton_schulz(
    G: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float
) -> torch.Tensor:
    """Approximately orthogonalise each matrix of G (n, A, B): Muon's quintic iteration, in bf16."""
    a, b, c = coefficients
    X = G.bfloat16()
    tall = G.size(-2) > G.size(-1)
    if tall:  # iterate on the wide side: the Gram matrix X X^T is the smaller one
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A^2
        X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
    return X.mT if tall else X


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


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device, model_cfg: ModelConfig | None = None
) -> torch.optim.Optimizer:
    """The configured optimizer over `param_groups(model, cfg)`."""
    groups = param_groups(model, cfg, model_cfg)
    check_name(cfg.name)
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
