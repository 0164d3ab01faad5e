"""Muon: orthogonalised momentum for the hidden matrices, batched over same-shape matrices.

The mathematics is in pure functions (`newton_schulz`, `lr_scale`); `Muon` is a thin
`torch.optim.Muon` around them. Use it for 2-D hidden weights only (`split_for_muon`):
embeddings, the output head, norms and biases belong to AdamW.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from steplab.optim.groups import Groups


def split_for_muon(groups: Groups) -> tuple[Groups, Groups]:
    """(Muon groups, AdamW groups): Muon orthogonalises the 2-D hidden matrices only.

    Embeddings are lookup tables (one row per token, not a linear map of the residual stream)
    and the head maps to a vocabulary; Muon's authors optimise both, plus norms and biases,
    with AdamW. The hidden matrices are exactly `param_groups`' "matrix" group.
    """
    muon = [g for g in groups if g["name"] == "matrix"]
    assert all(p.dim() == 2 for g in muon for p in g["params"]), "Muon takes 2-D matrices only"
    return muon, [g for g in groups if g["name"] != "matrix"]


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
                scale = lr * lr_scale(group["adjust_lr_fn"], shape)
                if wd:
                    torch._foreach_mul_(ps, 1 - lr * wd)
                torch._foreach_add_(ps, list(ortho.to(ps[0].dtype).unbind(0)), alpha=-scale)
        return loss


def lr_scale(adjust_lr_fn: str | None, shape: tuple[int, ...]) -> float:
    """How much Muon scales the learning rate of an (A, B) matrix, as `torch.optim.Muon` documents.

    The orthogonalised update has unit singular values, so its RMS depends on the shape; the
    scale evens that out. "original" (Keller Jordan's, torch's default): sqrt(max(1, A / B)).
    "match_rms_adamw" (Moonshot, "Muon is Scalable for LLM Training"): 0.2 * sqrt(max(A, B)),
    AdamW's update RMS, so AdamW's learning rate and weight decay carry over. torch computes it
    in a private helper; this is the public formula, tested against torch's own steps.
    """
    A, B = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, A / B))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(A, B))
    raise ValueError(f"Muon: unknown adjust_lr_fn {adjust_lr_fn!r} (original or match_rms_adamw)")


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
