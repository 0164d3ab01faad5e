"""What a compare trains: the variants, their configs, seeds and budget.

Every variant (the cartesian product of the ``--vary`` settings, plus any named
``--variant``) is trained once per seed on the same data, seeds and budget. Learning rates:
when the optimizer is what varies, each variant gets its optimizer's tuned default
(`steplab.optim.DEFAULT_LR`) unless ``--optim.lr`` is given or ``optim.lr`` is itself
varied; when the optimizer does not vary, the config's learning rate is used as is.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from steplab.config import RunConfig, set_value, to_dict
from steplab.errors import ConfigError
from steplab.loop.fit import tokens_per_step
from steplab.loop.session import check
from steplab.optim import DEFAULT_LR


@dataclass(frozen=True)
class Variant:
    """One row of the comparison: a label and the settings it changes (`named`: a
    ``--variant NAME ...`` row, not a combination of ``--vary`` values)."""

    label: str
    overrides: tuple[tuple[str, str], ...]
    named: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._=+-]+", "_", self.label).strip("_") or "variant"


@dataclass(frozen=True)
class Budget:
    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.steps, self.tokens, self.seconds))


def parse_vary(specs: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``KEY=V1,V2`` strings → [(key, [values])]; keys use the flag spelling (``optim.name``)."""
    out: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise ConfigError(f"--vary must be KEY=V1,V2,... (got {spec!r})")
        if any(key == k for k, _ in out):
            raise ConfigError(f"--vary {key} is given twice (list all its values in one --vary)")
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--vary {key}: a value is listed twice ({values})")
        out.append((key, vals))
    return out


def parse_variant(tokens: Sequence[str]) -> Variant:
    """``NAME KEY=VALUE ...`` → a named variant (one explicit row, e.g. a reference setting)."""
    if not tokens or "=" in tokens[0]:
        raise ConfigError(f"--variant must be NAME KEY=VALUE ... (got {' '.join(tokens)!r})")
    pairs = []
    for tok in tokens[1:]:
        key, sep, value = tok.partition("=")
        if not sep or not key:
            raise ConfigError(f"--variant {tokens[0]}: expected KEY=VALUE (got {tok!r})")
        pairs.append((key.strip().lstrip("-").replace("-", "_"), value.strip()))
    return Variant(tokens[0], tuple(pairs), named=True)


def plan_variants(vary: Sequence[tuple[str, list[str]]], named: Sequence[Variant] = ()) -> list[Variant]:
    """The cartesian product of the varied values, then the named variants; labels are unique."""
    out: list[Variant] = []
    if vary:
        keys = [k for k, _ in vary]
        for combo in itertools.product(*(vals for _, vals in vary)):
            out.append(Variant(", ".join(combo), tuple(zip(keys, combo, strict=True))))
    out += named
    if not out:
        out = [Variant("base", ())]
    labels = [v.label for v in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"compare: variant label {dup[0]!r} is used twice")
    slugs = [v.slug for v in out]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"compare: two variants map to the same directory name ({', '.join(slugs)})")
    return out


def eval_every(cfg: RunConfig, target: float | None) -> int:
    """The config's interval; with a target but no interval, about 20 evaluations per run
    (every 100 steps on a time budget), so that time-to-target is measured."""
    t = cfg.train
    if cfg.eval.every or target is None:
        return cfg.eval.every
    if t.max_seconds:
        return 100
    limits = [t.max_steps, t.max_tokens // tokens_per_step(cfg) if t.max_tokens else None]
    return max(1, min(x for x in limits if x) // 20)


def variant_config(
    base: RunConfig,
    v: Variant,
    *,
    optim_varies: bool,
    lr_fixed: bool,
    budget: Budget,
    seed: int,
    target: float | None = None,
) -> tuple[RunConfig, str]:
    """The config of one run, and where its learning rate came from."""
    cfg = copy.deepcopy(base)
    for key, value in v.overrides:
        set_value(cfg, key, value, where=f"--vary {key}")
    check(cfg)  # an unknown optimizer is named here, with the valid ones
    keys = {k for k, _ in v.overrides}
    if "optim.lr" in keys or lr_fixed:
        lr_source = "set"
    elif optim_varies:
        if cfg.optim.name not in DEFAULT_LR:
            raise ConfigError(f"compare: no default learning rate for {cfg.optim.name}; set --optim.lr")
        cfg.optim.lr, lr_source = DEFAULT_LR[cfg.optim.name], f"default for {cfg.optim.name}"
    else:
        lr_source = "config"
    if isinstance(cfg.optim.lr, str):
        raise ConfigError("compare: --optim.lr auto is not supported here; give a number (or leave it unset)")
    if budget.given():
        t = cfg.train
        t.max_steps, t.max_tokens, t.max_seconds = budget.steps, budget.tokens, budget.seconds
    cfg.train.seed = seed
    cfg.eval.every = eval_every(cfg, target)
    if cfg.checkpoint.every == 0 and cfg.eval.every:  # an interrupted compare resumes from there
        cfg.checkpoint.every = cfg.eval.every
    return check(cfg), lr_source


@dataclass
class Plan:
    variants: list[Variant]
    seeds: list[int]
    configs: dict[tuple[str, int], RunConfig]
    lr_sources: dict[str, str]


def make_plan(
    base: RunConfig,
    variants: Sequence[Variant],
    *,
    seeds: int,
    budget: Budget,
    lr_fixed: bool,
    target: float | None = None,
) -> Plan:
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1 (got {seeds})")
    seed_list = [base.train.seed + i for i in range(seeds)]
    optim_varies = any(k == "optim.name" for v in variants for k, _ in v.overrides)
    configs, sources = {}, {}
    for v in variants:
        for seed in seed_list:
            cfg, src = variant_config(
                base,
                v,
                optim_varies=optim_varies,
                lr_fixed=lr_fixed,
                budget=budget,
                seed=seed,
                target=target,
            )
            configs[v.label, seed], sources[v.label] = cfg, src
    return Plan(list(variants), seed_list, configs, sources)


def default_out(base: RunConfig, plan: Plan) -> Path:
    """runs/compare-PRESET-HASH: the same command finds the same directory (and resumes it)."""
    blob = json.dumps({k[0] + str(k[1]): to_dict(c) for k, c in plan.configs.items()}, sort_keys=True)
    return Path("runs") / f"compare-{base.preset}-{hashlib.sha1(blob.encode()).hexdigest()[:8]}"
