"""Decision 1: the tokenizer, judged in bits per byte on equal-time proxy runs.

Bits per byte compare across tokenizers: a BPE token carries several bytes, so its loss per
token is higher while it may still predict the text better. Each candidate trains the same
small model for the same time (its own tokens per second: a larger vocabulary makes the
output layer, and so the step, slower), on the same corpus.
"""

from __future__ import annotations

import copy

from steplab.auto.context import Context
from steplab.auto.space import MIN_STEPS, TokenizerChoice, tokenizer_candidates
from steplab.auto.state import Decision
from steplab.config import RunConfig

CHAR = {"tokenizer.kind": "char"}


def with_tokenizer(cfg: RunConfig, cand: TokenizerChoice) -> RunConfig:
    c = copy.deepcopy(cfg)
    c.tokenizer.kind = cand.kind  # type: ignore[assignment]
    if cand.vocab_size:
        c.tokenizer.vocab_size = cand.vocab_size
    return c


def decide_tokenizer(ctx: Context, allowance: float) -> Decision:
    start = ctx.clock.spent()
    char = with_tokenizer(ctx.cfg, TokenizerChoice("char", "char", 0))
    meta = ctx.data(char).meta
    cands = tokenizer_candidates(int(meta["characters"]), int(meta["vocab_size"]))
    if len(cands) == 1:
        reason = f"the corpus ({meta['characters']:,} characters) is too small to learn BPE merges from"
        return Decision("tokenizer", "tokenizer: char", CHAR, reason, rule="rule")
    sp = ctx.speed(char)
    while len(cands) > 1 and not ctx.affordable(sp, char, allowance / len(cands), MIN_STEPS):
        cands.pop()  # the largest vocabulary first: it is the slowest to tokenize and to train
    if len(cands) == 1:
        reason = (
            f"no budget to compare tokenizers ({MIN_STEPS} proxy steps cost {ctx.step_cost(sp, char) * MIN_STEPS:.3g} "
            f"each, the stage had {allowance:.3g}): char, the default"
        )
        return Decision("tokenizer", "tokenizer: char", CHAR, reason, rule="fallback")
    rows = [["tokenizer", "vocabulary", "bytes/token", "tokens/s", "tokens trained", "val bits/byte"]]
    results = {}
    for i, cand in enumerate(cands):
        cfg = with_tokenizer(ctx.cfg, cand)
        data = ctx.data(cfg)  # tokenizing is part of the price
        sp = ctx.speed(cfg)
        share = (allowance - (ctx.clock.spent() - start)) / (len(cands) - i)
        p = ctx.proxy(
            f"tokenizer-{cand.name}", cfg, tokens=ctx.tokens_for(sp, share), params=sp.matmul_params
        )
        results[cand.name] = (cand, p)
        bpb = f"{p.val_bpb:.4f}" if p.ok else f"excluded ({p.verdict})"
        rows.append(
            [
                cand.name,
                str(data.tokenizer.vocab_size),
                f"{data.bytes_per_token:.2f}",
                f"{sp.tokens_per_second:,.0f}",
                f"{p.tokens:,}",
                bpb,
            ]
        )
    ok = {k: v for k, v in results.items() if v[1].ok}
    if not ok:
        return Decision(
            "tokenizer",
            "tokenizer: char",
            CHAR,
            "every proxy diverged or failed: char",
            rule="fallback",
            table=rows,
        )
    best = min(ok, key=lambda k: ok[k][1].val_bpb or 0.0)
    cand, proxy = ok[best]
    others = sorted((v[1].val_bpb or 0.0) for k, v in ok.items() if k != best)
    margin = f", {others[0] - (proxy.val_bpb or 0.0):.4f} ahead of the next" if others else ""
    choice: dict[str, object] = {"tokenizer.kind": cand.kind}
    if cand.vocab_size:
        choice["tokenizer.vocab_size"] = cand.vocab_size
    return Decision(
        "tokenizer",
        f"tokenizer: {best}",
        choice,
        f"lowest validation bits per byte at equal time ({proxy.val_bpb:.4f}{margin})",
        table=rows,
        notes=[
            "Each candidate trained the same proxy model for the same time on this machine. Short "
            "runs favour small vocabularies (fewer embedding rows to learn), so a larger vocabulary "
            "that wins here tends to win by more at the final run's length.",
        ],
        commands=[
            f"steplab compare --config {ctx.out / 'proxies' / ('tokenizer-' + best) / 'config.toml'} "
            "--vary tokenizer.kind=" + ",".join(sorted({c.kind for c in cands}))
        ],
    )
