"""Do the presets fit the method or Shakespeare? Train them on other corpora found on this machine.

Corpora (built locally, nothing downloaded; each capped at --chars characters):
- prose: the Vim user manual (/usr/share/vim/vim*/doc/usr_*.txt), English technical prose;
- code:  the Python standard library's top-level modules (Lib/*.py of the running Python);
- shakespeare: the bundled corpus, for comparison.

For each corpus and preset, prints the final validation loss and bits per byte (bpb compares
across tokenizers) and the training time.

    python benchmarks/generalize.py --presets default shakespeare_char --tokenizers char bpe
"""

from __future__ import annotations

import argparse
import glob
import sys
import sysconfig
import tempfile
from pathlib import Path

from common import steplab, table


def build_corpora(root: Path, chars: int) -> dict[str, Path]:
    out = {}
    prose = sorted(glob.glob("/usr/share/vim/vim*/doc/usr_*.txt"))
    code = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    for name, files in (("prose", prose), ("code", code)):
        if not files:
            print(f"skipping {name}: no source files found", file=sys.stderr)
            continue
        text, parts = 0, []
        for f in files:
            t = Path(f).read_text(encoding="utf-8", errors="replace")
            parts.append(t)
            text += len(t)
            if text >= chars:
                break
        p = root / f"{name}.txt"
        p.write_text("\n".join(parts)[:chars], encoding="utf-8")
        out[name] = p
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["default", "shakespeare_char"])
    ap.add_argument("--tokenizers", nargs="+", default=["char"])
    ap.add_argument("--chars", type=int, default=1_100_000, help="corpus size (Tiny Shakespeare is 1.1M)")
    ap.add_argument("--skip-shakespeare", action="store_true", help="only the other corpora")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpora = {} if args.skip_shakespeare else {"shakespeare": None}
        corpora.update(build_corpora(Path(tmp), args.chars))
        rows = []
        for corpus, path in corpora.items():
            for tok in args.tokenizers:
                for preset in args.presets:
                    extra = ["--data", str(path)] if path else []
                    extra += ["--tokenizer", tok] + (
                        ["--tokenizer.vocab-size", "1024"] if tok == "bpe" else []
                    )
                    summary, _ = steplab("--preset", preset, "--eval.every", "0", *extra)
                    rows.append(
                        [
                            corpus,
                            tok,
                            preset,
                            f"{summary['val_loss']:.4f}",
                            f"{summary['val_bpb']:.4f}",
                            f"{summary['train_seconds']:.0f}",
                        ]
                    )
                    print(rows[-1], file=sys.stderr, flush=True)
    print(table(["corpus", "tokenizer", "preset", "val loss", "val bits/byte", "train s"], rows))


if __name__ == "__main__":
    main()
