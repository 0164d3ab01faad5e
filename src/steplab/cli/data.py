"""The `steplab data` commands: get a corpus ready before training.

``steplab data prepare`` reads the corpus, optionally scrubs personal data and secrets
(``--redact``, see `steplab.data.redact`), trains the tokenizer and writes the token cache that
`steplab train` with the same data and tokenizer settings then reuses. It reports what it
found, including how many items of each kind were redacted.
"""

from __future__ import annotations

import argparse
from typing import Any


def cmd_prepare(args: argparse.Namespace) -> int:
    from steplab.cli.main import config_from_args
    from steplab.data.cache import cache_root, prepare

    cfg = config_from_args(args)
    if args.redact:
        cfg.data.redact = True
    data = prepare(cfg.data, cfg.tokenizer)
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


def register_cli(sub: Any, commands: dict[str, Any]) -> None:
    from steplab.cli.main import Parser, add_config_flags

    p = sub.add_parser("data", help="prepare a corpus: tokenize, cache and optionally redact it")
    inner = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=Parser, required=True)
    q = inner.add_parser(
        "prepare", help="tokenize and cache the corpus (--redact scrubs personal data first)"
    )
    add_config_flags(q)
    q.add_argument(
        "--redact",
        action="store_true",
        help="replace e-mails, phone numbers, IPs, card numbers and secret keys by [KIND] (same as --data.redact)",
    )
    commands["data"] = cmd_prepare
