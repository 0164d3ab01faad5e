"""Redaction: each kind replaced and counted, ordinary text untouched, `data prepare --data.redact`."""

from __future__ import annotations

from pathlib import Path

import pytest

from steplab.cli.main import main
from steplab.data.corpus import bundled_corpus
from steplab.data.redact import KINDS, luhn_ok, redact

PERSONAL = """\
Contact jane.doe+lists@example.co.uk or ops@mail.example.com for access.
Call +44 20 7946 0958, (555) 123-4567 or 555.987.6543 after nine.
The server at 192.168.10.24 talks to 2001:db8:85a3::8a2e:370:7334 and fe80::1ff:fe23:4567:890a.
Card: 4111 1111 1111 1111, also 5500-0000-0000-0004 and 378282246310005.
AWS key AKIAIOSFODNN7EXAMPLE, token ghp_abcdefghijklmnopqrstuvwxyz0123456789, sk-proj-abcdefghijklmnopqrstuv12.
password = "hunter2hunter2hunter2"
-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw
-----END RSA PRIVATE KEY-----
"""

EXPECTED = {"EMAIL": 2, "PHONE": 3, "IP": 3, "CARD": 3, "SECRET": 5}


def test_each_kind_is_replaced_and_counted() -> None:
    text, counts = redact(PERSONAL)
    assert counts == EXPECTED
    for secret in [
        "jane.doe",
        "7946",
        "123-4567",
        "192.168",
        "2001:db8",
        "fe80",
        "4111",
        "378282246310005",
        "AKIA",
        "ghp_",
        "sk-proj",
        "hunter2",
        "MIIEow",
    ]:
        assert secret not in text, secret
    assert "Contact [EMAIL] or [EMAIL] for access." in text
    assert "Call [PHONE], [PHONE] or [PHONE] after nine." in text
    assert "The server at [IP] talks to [IP] and [IP]." in text
    assert "Card: [CARD], also [CARD] and [CARD]." in text
    assert 'password = "[SECRET]"' in text and text.endswith("[SECRET]\n")


@pytest.mark.parametrize(
    "text",
    [
        "Order 4111 1111 1111 1112 shipped (a 16-digit number that fails the Luhn check).",
        "Released 2024-01-15 at 12:30:45, version 3.10.2, build 20240115, pi is 3.14159265.",
        "Room 101, 221B Baker Street; call extension 4567. Items: 1, 2, 3. IP-less 999.1.1.1 text.",
        "C++ code: std::vector<int> v; a::b::c; ratio 16:9 and 4:3.",
    ],
)
def test_near_misses_are_left_alone(text: str) -> None:
    assert redact(text) == (text, dict.fromkeys(KINDS, 0))


def test_tiny_shakespeare_comes_out_unchanged() -> None:
    text = bundled_corpus().read_text(encoding="utf-8")
    out, counts = redact(text)
    assert counts == dict.fromkeys(KINDS, 0) and out == text


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")


def test_data_prepare_reports_counts_and_train_never_sees_the_originals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((PERSONAL + "An ordinary line of text follows the data.\n") * 20)
    assert main(["data", "prepare", "--data", str(corpus), "--tokenizer", "byte", "--data.redact"]) == 0
    out = capsys.readouterr().out
    assert "redacted 320 items: 100 SECRET, 40 EMAIL, 60 IP, 60 CARD, 60 PHONE" in out
    assert "1 document," in out
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(corpus), "--data.redact", "--run-dir", str(run)]
    assert main([*argv, "--train.max-steps", "2", "--quiet", "--train.tensorboard", "false"]) == 0
    capsys.readouterr()
    from steplab.data.cache import prepare
    from steplab.presets import tiny

    cfg = tiny()
    cfg.data.path, cfg.data.redact = str(corpus), True
    data = prepare(cfg.data, cfg.tokenizer)
    seen = data.tokenizer.decode([*data.train.tolist(), *data.val.tolist()])
    assert "[EMAIL]" in seen and "jane.doe" not in seen and "4111" not in seen


def test_data_prepare_without_redaction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "plain.txt"
    corpus.write_text("nothing personal here, just words and more words.\n" * 50)
    assert main(["data", "prepare", "--data", str(corpus)]) == 0
    out = capsys.readouterr().out
    assert "1 document, 2,500 characters -> 2,500 tokens" in out and "redacted" not in out
    assert main(["data", "prepare", "--data", str(corpus), "--data.redact"]) == 0
    assert "redacted 0 items: 0 SECRET, 0 EMAIL, 0 IP, 0 CARD, 0 PHONE" in capsys.readouterr().out
