"""`steplab data prepare`: get a corpus ready before training.

It reads the corpus, optionally scrubs personal data and secrets (``--data.redact``, see
`steplab.data.redact`), trains the tokenizer and writes the token cache that `steplab train`
with the same data and tokenizer settings then reuses. It reports what it found, including
how many items of each kind were redacted.
"""

from __future__ import annotations

from dataclasses import dataclass

from steplab.cli.options import Command, ConfigOptions
from steplab.config import RunConfig


@dataclass(kw_only=True)
class PrepareOptions(ConfigOptions):
    """Tokenize and cache a corpus (--data.redact scrubs personal data first).

    `steplab train` with the same --data.* and --tokenizer.* settings reuses the cache.
    """


def cmd_prepare(opts: PrepareOptions, cfg: RunConfig) -> int:
    from steplab.data.cache import cache_root, prepare

    data = prepare(cfg.data, cfg.tokenizer, progress=True)
    m = data.meta
    print(
        f"{cfg.data.path or 'bundled Tiny Shakespeare'}: {m['documents']} document{'s' * (m['documents'] != 1)}, "
        f"{m['characters']:,} characters "
        f"-> {m['tokens']:,} tokens ({len(data.train):,} train, {len(data.val):,} validation), "
        f"{cfg.tokenizer.kind} vocabulary {m['vocab_size']}"
    )
    if m.get("redactions") is not None:
        counts = m["redactions"]
        total = sum(counts.values())
        kinds = ", ".join(f"{counts[k]} {k}" for k in counts)
        print(f"redacted {total} items: {kinds}")
    print(
        f"cache: {cache_root(cfg.data) / 'tokens'} (reused by `steplab train` with the same --data.* and --tokenizer.*)"
    )
    return 0


PREPARE = Command("data prepare", PrepareOptions, cmd_prepare, sections=("data", "tokenizer"))
GROUP_HELP = "get a corpus ready before training (data prepare)"
