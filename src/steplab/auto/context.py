"""What every decision of `steplab auto` works with: the budget, the clock, the state, the
config so far, and the proxy runs (short normal training runs) it measures with."""

from __future__ import annotations

import copy
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steplab.auto.budget import Budget, Clock
from steplab.auto.state import AutoState, Decision
from steplab.config import RunConfig, dump_toml
from steplab.data.cache import TokenData, prepare
from steplab.loop.fit import train
from steplab.loop.hooks import Callback
from steplab.progress import ProgressView
from steplab.rundir import read_metrics
from steplab.tools.throughput import Speed, measure_speed

PROXY_EVAL_WINDOWS = 128  # the same seeded validation windows for every proxy: paired comparisons


@dataclass
class Proxy:
    """A finished proxy run, as `auto.json` keeps it."""

    name: str
    status: str
    val_loss: float | None
    val_bpb: float | None
    tokens: int
    train_seconds: float
    wall_seconds: float
    matmul_params: int
    flops_per_token: float
    curve: list[list[float]] = field(default_factory=list)  # [tokens, mean train loss] per tenth of the run
    vocab_size: int = 0

    @property
    def ok(self) -> bool:
        """Finished, and learnt something: a loss at the uniform guess (ln V) or above is a
        run that diverged or never started learning, whatever its status says."""
        if self.status not in ("finished", "target") or self.val_loss is None or self.val_bpb is None:
            return False
        return not self.vocab_size or self.val_loss < 0.97 * math.log(self.vocab_size)

    @property
    def verdict(self) -> str:
        """How a table shows an excluded proxy."""
        return self.status if self.status not in ("finished", "target") else "did not learn"


class Tick(Callback):
    """Moves the overall bar while a proxy trains."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def on_log(self, s: Any, state: Any, record: dict[str, Any]) -> None:
        self.ctx.tick()


@dataclass
class Context:
    out: Path
    budget: Budget
    clock: Clock
    state: AutoState
    cfg: RunConfig  # the best config so far: the template plus every decision taken
    view: ProgressView
    data_cache: dict[str, TokenData] = field(default_factory=dict)

    # --- bookkeeping ------------------------------------------------------------------------

    def save(self) -> None:
        self.state.spent_seconds = self.clock.seconds
        self.state.spent_flops = self.clock.flops
        self.state.config = dump_toml(self.cfg)
        self.state.save(self.out)

    def tick(self) -> None:
        self.view.update(100 * self.clock.fraction(), f"{self.clock.seconds:,.0f} s spent")

    def say(self, text: str) -> None:
        if self.view.enabled:
            self.view.line(text)

    def record(self, d: Decision, start_cost: float, start_seconds: float) -> None:
        """Apply a decision's settings to the config, keep it in the state, tell the user."""
        from steplab.config import set_value

        for key, value in d.choice.items():
            set_value(self.cfg, key, value)
        d.cost = self.clock.spent() - start_cost
        d.seconds = self.clock.seconds - start_seconds
        self.state.decisions.append(d)
        self.save()
        self.tick()
        self.say(f"auto: {d.title}: {d.reason}")

    @staticmethod
    def restore_config(text: str) -> RunConfig:
        import tomllib

        from steplab.config import from_dict

        return from_dict(tomllib.loads(text))

    # --- measuring --------------------------------------------------------------------------

    def proxy_overhead(self) -> float:
        """Seconds a proxy costs beyond its training steps (build, evaluation, files)."""
        xs = [p["wall_seconds"] - p["train_seconds"] for p in self.state.proxies.values()]
        return statistics.median(xs) if xs else 2.0

    def tokens_for(self, sp: Speed, share: float) -> int:
        """Training tokens a proxy of `cfg`'s speed `sp` gets for `share` of the budget."""
        if self.budget.kind == "flops":
            tokens = share / sp.flops_per_token
        else:
            tokens = sp.tokens_per_second * max(share - self.proxy_overhead(), 0.25 * share)
        per_step = sp.tokens_per_second * sp.step_seconds
        return int(max(tokens, per_step))

    def data(self, cfg: RunConfig) -> TokenData:
        """The tokenized corpus for `cfg`'s tokenizer (built once, then from the cache)."""
        key = f"{cfg.tokenizer.kind}-{cfg.tokenizer.vocab_size}"
        if key not in self.data_cache:
            self.data_cache[key] = prepare(cfg.data, cfg.tokenizer)
        return self.data_cache[key]

    def speed(self, cfg: RunConfig) -> Speed:
        """Tokens per second of `cfg` on this device, measured once per shape, tokenizer and
        batch (kept in the state). Slow shapes get fewer timed steps."""
        key = speed_key(cfg)
        cached = self.state.measurements.setdefault("speed", {}).get(key)
        if cached:
            return Speed(**cached)
        c = quiet_copy(cfg)
        slow = self.state.measurements["speed"] and self._guess_step_seconds(c) > 0.01 * self.budget.search
        sp = measure_speed(c, data=self.data(c), steps=2 if slow else 4, warmup=1 if slow else 2)
        self.clock.flops += sp.flops_per_token * c.train.batch_size * c.model.block_size * 6
        self.state.measurements["speed"][key] = asdict(sp)
        self.save()
        return sp

    def _guess_step_seconds(self, cfg: RunConfig) -> float:
        """A step's seconds predicted from the FLOPs rate of the shapes measured so far."""
        from steplab.model import flops_per_token as fpt_of

        speeds = self.state.measurements.get("speed", {}).values()
        rate = max((s["tokens_per_second"] * s["flops_per_token"] for s in speeds), default=0.0)
        if rate <= 0:
            return 0.0
        m = cfg.model
        n = 12 * m.n_layer * m.n_embd**2 + (m.vocab_size or 256) * m.n_embd
        return fpt_of(m, n) * cfg.train.batch_size * m.block_size / rate

    def step_cost(self, sp: Speed, cfg: RunConfig) -> float:
        """One optimizer step in the budget's unit."""
        if self.budget.kind == "seconds":
            return sp.step_seconds
        return sp.flops_per_token * cfg.train.batch_size * cfg.train.grad_accum * cfg.model.block_size

    def affordable(self, sp: Speed, cfg: RunConfig, share: float, min_steps: int) -> bool:
        """Whether `share` of the budget buys a proxy of at least `min_steps` steps."""
        overhead = self.proxy_overhead() if self.budget.kind == "seconds" else 0.0
        return share >= overhead + min_steps * self.step_cost(sp, cfg)

    def proxy(
        self,
        name: str,
        cfg: RunConfig,
        *,
        tokens: int,
        params: int = 0,
        evals: int = 1,
        seconds_cap: float | None = None,
    ) -> Proxy:
        """Train `cfg` for `tokens` tokens as a proxy run under ``proxies/NAME`` (once: a
        finished proxy is read back from the state on resume)."""
        if name in self.state.proxies:
            return Proxy(**self.state.proxies[name])
        c = proxy_config(cfg, tokens=tokens, evals=evals, seconds_cap=seconds_cap)
        run_dir = self.out / "proxies" / name
        start = self.clock.seconds
        result = train(c, run_dir, overwrite=True, callbacks=[Tick(self)], progress=False)
        records = read_metrics(run_dir / "metrics.jsonl")
        curve = loss_curve(records)
        info = _read_run_info(run_dir)
        fpt = float(info.get("flops_per_token") or 0.0)
        p = Proxy(
            name=name,
            status=result.status,
            val_loss=_finite(result.final.get("val_loss")),
            val_bpb=_finite(result.final.get("val_bpb")),
            tokens=result.state.tokens,
            train_seconds=result.state.train_seconds,
            wall_seconds=self.clock.seconds - start,
            matmul_params=params,
            flops_per_token=fpt,
            curve=curve,
            vocab_size=int(c.model.vocab_size or 0),
        )
        self.clock.flops += fpt * p.tokens
        self.state.proxies[name] = asdict(p)
        self.save()
        self.tick()
        return p


def speed_key(cfg: RunConfig) -> str:
    m, tok = cfg.model, cfg.tokenizer
    vocab = f"{tok.vocab_size}" if tok.kind == "bpe" else ""
    return f"{tok.kind}{vocab}-w{m.n_embd}-d{m.n_layer}-t{m.block_size}-b{cfg.train.batch_size}"


def loss_curve(records: list[dict[str, Any]], pieces: int = 10) -> list[list[float]]:
    """[tokens, mean train loss] over each tenth of a run's logged steps.

    Training loss on fresh batches estimates the loss on the corpus as well as a validation
    pass would (a proxy sees far less than an epoch), and it is free: the fit of the size
    decision uses these points.
    """
    steps = [
        (float(r["tokens"]), float(r["loss"]))
        for r in records
        if _finite(r.get("loss")) is not None and "tokens" in r
    ]
    if len(steps) < pieces:
        return [[t, loss] for t, loss in steps]
    out = []
    for k in range(pieces):
        part = steps[k * len(steps) // pieces : (k + 1) * len(steps) // pieces]
        out.append([part[-1][0], sum(x for _, x in part) / len(part)])
    return out


def quiet_copy(cfg: RunConfig) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.train.progress, c.train.tensorboard = False, False
    return c


def proxy_config(cfg: RunConfig, *, tokens: int, evals: int, seconds_cap: float | None) -> RunConfig:
    """`cfg` as a proxy: a token budget (the same work whatever the machine's load), a few
    evaluations on a fixed subset of validation windows, one checkpoint at the end."""
    c = quiet_copy(cfg)
    t = c.train
    t.max_steps, t.max_tokens, t.max_seconds = None, max(tokens, 1), seconds_cap
    t.target_loss, t.noise_scale_every = None, 0
    steps = max(1, tokens // (t.batch_size * t.grad_accum * c.model.block_size))
    t.log_every = max(1, min(10, steps // 40))  # the loss curve is read from these records
    c.eval.every = max(1, steps // evals) if evals > 1 else 0
    c.eval.max_windows = PROXY_EVAL_WINDOWS
    c.schedule.warmup_steps = min(c.schedule.warmup_steps, max(1, steps // 10))
    c.checkpoint.every, c.checkpoint.keep_last, c.checkpoint.keep_best = 0, 1, False
    return c


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _read_run_info(run_dir: Path) -> dict[str, Any]:
    from steplab.rundir import read_json

    return read_json(run_dir / "run.json")


def warn(text: str) -> None:
    sys.stderr.write(f"warning: {text}\n")
