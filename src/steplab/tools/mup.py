"""muP in practice: the coordinate check and width transfer.

The parametrization itself lives where it acts: initialisation, attention scale and output
multiplier in `steplab.model`, per-group learning rates in `steplab.optim.mup_lr_mults`.

`coord_check` trains the same model at several widths for a few steps with one learning rate
and records the RMS of each layer's output at every step. Under muP these curves are flat in
the width (the update size per coordinate does not depend on it); under the standard
parametrization the later steps grow with the width (Yang et al. 2022, Tensor Programs V,
section 5.1: the coordinate check). `slopes` condenses a check to one number per layer.

`scaled_config` moves a tuned config to another width: it switches an SP config to muP with
the tuned width as the base (there muP *is* SP, see `steplab.model`), keeps the head count,
and leaves the learning rate alone; muP scales the per-group rates.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from steplab.atomic import replacing
from steplab.config import RunConfig
from steplab.data.cache import TokenData
from steplab.errors import ConfigError, SteplabError
from steplab.loop.session import build
from steplab.loop.step import train_step
from steplab.model import GPT, Block
from steplab.optim import mup_lr_mults, set_lr

# --- transfer ----------------------------------------------------------------------------------


def scaled_config(cfg: RunConfig, width: int) -> RunConfig:
    """`cfg` at `width` under muP, with the tuned hyperparameters referring to the tuned width."""
    if width < 1:
        raise ConfigError(f"--width must be >= 1 (got {width})")
    c = copy.deepcopy(cfg)
    m = c.model
    if m.parametrization == "sp":  # at its own width as the base, muP equals the tuned SP model
        m.parametrization, m.mup_base_width = "mup", m.n_embd
    if width % m.n_head:
        raise ConfigError(
            f"--width {width} must be divisible by the head count {m.n_head} "
            "(muP keeps the heads and grows the head size)"
        )
    if m.pos == "rope" and (width // m.n_head) % 2:
        raise ConfigError(f"--width {width}: rope needs an even head size (got {width // m.n_head})")
    m.n_embd = width
    return c.validate()


def group_lrs(cfg: RunConfig) -> dict[str, float]:
    """The effective peak learning rate of each parameter group under `cfg`'s parametrization."""
    lr = cfg.optim.lr if isinstance(cfg.optim.lr, float) else float("nan")
    mults = {"matrix": 1.0, "embed": 1.0, "head": 1.0, "vector": 1.0}
    if cfg.model.parametrization == "mup":
        mults = mup_lr_mults(cfg.optim.name, cfg.model.n_embd / cfg.model.mup_base_width)
    mults["embed"] *= cfg.optim.embed_lr_mult
    mults["head"] *= cfg.optim.head_lr_mult
    if cfg.model.tie_embeddings:
        mults.pop("head")
    return {k: lr * v for k, v in mults.items()}


# --- the coordinate check ----------------------------------------------------------------------


def at_width(cfg: RunConfig, width: int, parametrization: str) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.model.parametrization = parametrization  # type: ignore[assignment]
    c.model.n_embd = width
    return c


def _rms(t: torch.Tensor) -> float:
    return float(t.detach().float().pow(2).mean().sqrt())


def _watch(model: GPT, into: dict[str, float]) -> list[Any]:
    """Forward hooks that store each watched layer's output RMS in `into` (the last forward wins)."""
    handles = []

    def hook(name: str) -> Any:
        def fn(module: nn.Module, inputs: Any, output: Any) -> None:
            into[name] = _rms(output[0] if isinstance(output, tuple) else output)

        return fn

    handles.append(model.wte.register_forward_hook(hook("embedding")))
    for i, block in enumerate(model.blocks):
        assert isinstance(block, Block)
        handles.append(block.attn.register_forward_hook(hook(f"attn.{i}")))
        handles.append(block.mlp.register_forward_hook(hook(f"mlp.{i}")))
        handles.append(block.register_forward_hook(hook(f"block.{i}")))
    handles.append(model.register_forward_hook(hook("logits")))  # after the output multiplier
    return handles


@dataclass
class CoordCheck:
    parametrization: str
    widths: list[int]
    steps: int
    lr: float
    rms: dict[str, list[list[float]]]  # layer -> [width index][step] -> RMS


def coord_check(
    cfg: RunConfig,
    widths: Sequence[int],
    *,
    parametrization: str,
    steps: int = 5,
    lr: float | None = None,
    data: TokenData | None = None,
) -> CoordCheck:
    """Train `steps` steps at each width with a constant `lr` and record each layer's output RMS
    at every step (the forward pass of step t sees the weights after t updates)."""
    lr = lr if lr is not None else (cfg.optim.lr if isinstance(cfg.optim.lr, float) else 1e-2)
    rms: dict[str, list[list[float]]] = {}
    for wi, width in enumerate(widths):
        c = at_width(cfg, width, parametrization)
        c.train.max_steps = steps
        s = build(c, data=data)
        data = s.data  # tokenized once for all widths
        seen: dict[str, float] = {}
        handles = _watch(s.model, seen)
        try:
            for step in range(steps):
                set_lr(s.optimizer, lr)
                train_step(s.step_model, s.optimizer, s.micro_batches(step), grad_clip=0.0, amp=s.amp())
                for name, v in seen.items():
                    rms.setdefault(name, [[] for _ in widths])[wi].append(v)
        finally:
            for h in handles:
                h.remove()
    return CoordCheck(parametrization, list(widths), steps, lr, rms)


def slopes(check: CoordCheck, step: int = -1) -> dict[str, float]:
    """Per layer, the slope of log2(RMS) against log2(width) at `step`: 0 is flat; 1 means the
    activation doubles whenever the width doubles."""
    x = np.log2(np.asarray(check.widths, dtype=np.float64))
    out = {}
    for name, per_width in check.rms.items():
        y = np.log2(np.asarray([v[step] for v in per_width], dtype=np.float64))
        out[name] = float(np.polyfit(x, y, 1)[0]) if len(x) > 1 else 0.0
    return out


def plot_coord_checks(checks: Sequence[CoordCheck], out: Path) -> None:
    """One row per parametrization, one column per step; a line per layer against the width."""
    from steplab.figures import pyplot

    plt = pyplot()
    steps = max(c.steps for c in checks)
    cols = sorted({0, steps // 2, steps - 1}) if steps > 3 else list(range(steps))
    fig, axes = plt.subplots(
        len(checks), len(cols), figsize=(3.6 * len(cols), 3.2 * len(checks)), squeeze=False, sharey=True
    )
    for r, check in enumerate(checks):
        names = list(check.rms)
        cmap = plt.get_cmap("viridis")
        for ci, step in enumerate(cols):
            ax = axes[r][ci]
            for k, name in enumerate(names):
                ys = [v[step] for v in check.rms[name]]
                style = (
                    {"lw": 2.2, "color": "C3"}
                    if name == "logits"
                    else {"lw": 1, "color": cmap(k / len(names))}
                )
                ax.plot(check.widths, ys, marker="o", ms=3, label=name, **style)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{check.parametrization}, step {step + 1} (lr {check.lr:g})", fontsize=9)
            ax.set_xlabel("width")
            ax.grid(alpha=0.3, which="both")
        axes[r][0].set_ylabel("activation RMS")
    axes[0][-1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def check_widths(widths: Sequence[int], n_head: int) -> list[int]:
    ws = sorted(set(widths))
    if len(ws) < 2:
        raise SteplabError("--widths needs at least two widths")
    bad = [w for w in ws if w % n_head]
    if bad:
        raise SteplabError(f"--widths {bad} are not divisible by --model.n-head {n_head}")
    return ws
