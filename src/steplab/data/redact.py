"""Scrub personal data and secrets from text before it is tokenized.

`redact(text)` replaces e-mail addresses, phone numbers, IP addresses, payment-card numbers
and common secret-key shapes with typed placeholders (``[EMAIL]``, ``[PHONE]``, ``[IP]``,
``[CARD]``, ``[SECRET]``) and counts what it replaced per kind. It runs on the documents
before tokenization (``--data.redact`` in `train`, ``--redact`` in `data prepare`), so
neither the token cache nor the model ever sees the originals.

It is pattern matching, tuned to miss little and to leave ordinary prose alone (Tiny
Shakespeare comes out unchanged): card numbers must pass the Luhn check, IP addresses must
parse, phone numbers need a phone-like layout and 7 to 15 digits. It is not a guarantee:
names, street addresses and free-form secrets are not recognised. Kinds run in a fixed
order (secrets first, so a key that contains digits is not half-taken for a phone number).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

KINDS = ("SECRET", "EMAIL", "IP", "CARD", "PHONE")

_SECRET = re.compile(
    r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY-----.*?-----END (?:[A-Z]+ )*PRIVATE KEY-----"  # PEM private keys
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"  # GitHub tokens
    r"|\bxox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic-style secret keys
    r"|\b[sr]k_(?:live|test)_[A-Za-z0-9]{16,}"  # Stripe secret and restricted keys
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|\bhf_[A-Za-z0-9]{30,}"  # Hugging Face tokens
    r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JSON Web Tokens
    re.DOTALL,
)
# `api_key = "..."`, `password: ...`: the value goes, the name stays.
_ASSIGNED = re.compile(
    r"(?i)\b((?:api[_-]?key|secret(?:[_-]?key)?|access[_-]?token|auth[_-]?token|password|passwd)"
    r"[\"']?\s*[:=]\s*[\"']?)([A-Za-z0-9/+_\-.]{12,})"
)
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)(?![\w])")
_IPV6 = re.compile(r"(?i)(?<![\w:])(?:[0-9a-f]{0,4}:){2,7}[0-9a-f]{0,4}(?![\w:])")
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{1,4}(?:[ .-]\d{2,4}){1,4}"  # +44 20 7946 0958
    r"|\(\d{3}\)[ ]?\d{3}[ .-]\d{4}"  # (555) 123-4567
    r"|\d{3}[.-]\d{3}[.-]\d{4})(?![\w])"  # 555-123-4567
)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment-card number satisfies (catches 90% of random digit runs)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _ip_ok(s: str) -> bool:
    try:
        ip = ipaddress.ip_address(s)
    except ValueError:
        return False
    return ip.version == 4 or s.count(":") >= 7 or ("::" in s and len([g for g in s.split(":") if g]) >= 2)


def _card_ok(s: str) -> bool:
    digits = re.sub(r"[ -]", "", s)
    return 13 <= len(digits) <= 19 and luhn_ok(digits)


def _phone_ok(s: str) -> bool:
    return 7 <= sum(ch.isdigit() for ch in s) <= 15


Rule = tuple[str, re.Pattern[str], Callable[[str], bool] | None]
RULES: list[Rule] = [
    ("SECRET", _SECRET, None),
    ("EMAIL", _EMAIL, None),
    ("IP", _IPV4, _ip_ok),
    ("IP", _IPV6, _ip_ok),
    ("CARD", _CARD, _card_ok),
    ("PHONE", _PHONE, _phone_ok),
]


def redact(text: str) -> tuple[str, dict[str, int]]:
    """`text` with each recognised item replaced by ``[KIND]``, and the count per kind."""
    counts = dict.fromkeys(KINDS, 0)

    def assigned(m: re.Match[str]) -> str:
        counts["SECRET"] += 1
        return m.group(1) + "[SECRET]"

    text = _ASSIGNED.sub(assigned, text)
    for kind, pattern, valid in RULES:

        def sub(m: re.Match[str], kind: str = kind, valid: Callable[[str], bool] | None = valid) -> str:
            if valid is not None and not valid(m.group(0)):
                return m.group(0)
            counts[kind] += 1
            return f"[{kind}]"

        text = pattern.sub(sub, text)
    return text, counts
