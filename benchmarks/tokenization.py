"""Tokenization of a gigabyte corpus: `steplab data prepare`'s encoder vs HF tokenizers' own
`encode_batch`, MB/s per worker, and memory flat in corpus size.

    PYTHONPATH=src python benchmarks/tokenization.py                          # 1 GB, workers 1 and 2
    PYTHONPATH=src python benchmarks/tokenization.py --size-mb 200 --workers 1 --skip-memory

The corpus: the bundled Tiny Shakespeare's lines, shuffled with a seeded RNG over and over
and written until it reaches `--size-mb` (kept in `--corpus-dir` for the next run). The
tokenizer: byte-level BPE with 8192 tokens trained on the bundled text, the same
`tokenizer.json` for both sides. Each side runs in a fresh process, timed from its first
read to its last write, so both pay for reading the text and writing the tokens:

- steplab: the encoding pass of `steplab data prepare` (`steplab.data.encode.encode_to_file`:
  pieces of 256-512 KB cut where BPE cannot merge across, in-process for 1 worker, in
  `--data.workers N` processes otherwise);
- the peer: `tokenizers.Tokenizer.encode_batch` on batches of lines (256 KB each) with its
  own Rust thread pool (`TOKENIZERS_PARALLELISM=false` for 1 thread, `RAYON_NUM_THREADS=N`
  otherwise), ids gathered into a uint16 array and written to a file; and the same with
  `encode_batch_fast` (tokenizers >= 0.21: no character offsets), the call steplab makes.

Memory: the peak resident set of the whole `steplab data prepare --data CORPUS --tokenizer
bpe` process tree (tokenizer training on the corpus, then encoding; worker processes
included, sampled every 50 ms) on the full corpus and on a 10 MB one; the growth is their
difference (goal: < 200 MB). Memory figures hold on a busy machine; MB/s need a quiet one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, table

BUNDLED = ROOT / "src" / "steplab" / "data" / "tinyshakespeare.txt"

OURS = """
import json, sys, time
from pathlib import Path
from steplab.config import DataConfig
from steplab.data import encode
from steplab.data.tokenizer import from_json
corpus, tok_json, out, workers = sys.argv[1:5]
tok = from_json(json.loads(Path(tok_json).read_text()))
t0 = time.perf_counter()
n = encode.encode_to_file(DataConfig(path=corpus, workers=int(workers)), tok, Path(out), encode.Stats())
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": n}))
"""

PEER = """
import json, sys, time
import numpy as np
from tokenizers import Tokenizer
corpus, tok_json, out, api = sys.argv[1:5]
tok = Tokenizer.from_str(json.dumps(json.load(open(tok_json))["hf"]))
encode_batch = getattr(tok, api)
n = 0
t0 = time.perf_counter()
with open(corpus, encoding="utf-8") as f, open(out, "wb") as o:
    while lines := f.readlines(1 << 18):
        ids = np.concatenate([np.asarray(e.ids, dtype=np.uint16) for e in encode_batch(lines)])
        ids.tofile(o)
        n += len(ids)
print(json.dumps({"seconds": time.perf_counter() - t0, "tokens": n}))
"""


def make_corpus(path: Path, size: int, seed: int = 0) -> Path:
    """Lines of the bundled text in seeded random orders, repeated until `size` bytes."""
    if path.exists() and path.stat().st_size >= size:
        return path
    lines = BUNDLED.read_text(encoding="utf-8").splitlines(keepends=True)
    rng, written = random.Random(seed), 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        while written < size:
            rng.shuffle(lines)
            chunk = "".join(lines)[: size - written]
            fh.write(chunk)
            written += len(chunk.encode("utf-8"))
    os.replace(tmp, path)
    return path


def train_tokenizer(out: Path) -> Path:
    from steplab.config import TokenizerConfig
    from steplab.data.tokenizer import BPETokenizer

    tok = BPETokenizer.train(
        [BUNDLED.read_text(encoding="utf-8")], TokenizerConfig(kind="bpe", vocab_size=8192)
    )
    out.write_text(json.dumps(tok.to_json()))
    return out


def run_json(code: str, *argv: str, env: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
    full_env = {**os.environ, **(env or {})}
    out = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=full_env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and all its descendants (Linux /proc)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm", encoding="ascii") as fh:
                total += int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children", encoding="ascii") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (OSError, ValueError):
            continue
    return total


def prepare_peak_mib(corpus: Path, workers: int, cache: Path) -> tuple[float, float]:
    """(peak MiB of the process tree, seconds) of `steplab data prepare` on `corpus`."""
    cmd = [sys.executable, "-m", "steplab", "data", "prepare", "--data", str(corpus), "--tokenizer", "bpe",
           "--tokenizer.vocab-size", "8192", "--data.workers", str(workers), "--data.cache-dir", str(cache)]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, tree_rss_mib(proc.pid))
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(proc.stderr.read() if proc.stderr else f"data prepare exited {proc.returncode}")
    return peak, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--size-mb", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--corpus-dir", default=str(Path(tempfile.gettempdir()) / "steplab-bench-corpus"))
    ap.add_argument("--skip-memory", action="store_true", help="only the MB/s comparison")
    ap.add_argument("--skip-speed", action="store_true", help="only the memory check")
    args = ap.parse_args()
    cdir = Path(args.corpus_dir)
    cdir.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(cdir / f"corpus-{args.size_mb}mb.txt", args.size_mb * 10**6)
    mb = corpus.stat().st_size / 1e6
    print(f"`{' '.join(['python', *sys.argv])}`: corpus {mb:,.0f} MB ({corpus}), BPE 8192\n")
    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(Path(tmp) / "tokenizer.json")
        if not args.skip_speed:
            rows = []
            for w in args.workers:
                threads = {"TOKENIZERS_PARALLELISM": "false"} if w == 1 else {"RAYON_NUM_THREADS": str(w)}
                ours = run_json(OURS, str(corpus), str(tok), str(Path(tmp) / "ours.bin"), str(w))
                peer, fast = (
                    run_json(PEER, str(corpus), str(tok), str(Path(tmp) / "peer.bin"), api, env=threads)
                    for api in ("encode_batch", "encode_batch_fast")
                )
                a, b, c = (mb / r["seconds"] for r in (ours, peer, fast))
                rows.append([w, f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}", f"{c:.2f}", f"{a / c:.2f}",
                             f"{ours['tokens']:,}", f"{peer['tokens']:,}"])  # fmt: skip
                print(" | ".join(map(str, rows[-1])), file=sys.stderr)
            heads = [
                "workers / threads",
                "steplab MB/s",
                "encode_batch MB/s",
                "ratio",
                "encode_batch_fast MB/s",
                "ratio",
                "steplab tokens",
                "peer tokens",
            ]
            print(table(heads, rows) + "\n")
        if not args.skip_memory:
            small = make_corpus(cdir / "corpus-10mb.txt", 10 * 10**6)
            rows = []
            for w in args.workers:
                p_small, _ = prepare_peak_mib(small, w, Path(tmp) / f"cache-small-{w}")
                p_big, secs = prepare_peak_mib(corpus, w, Path(tmp) / f"cache-big-{w}")
                rows.append(
                    [w, f"{p_small:,.0f}", f"{p_big:,.0f}", f"{p_big - p_small:+,.0f}", f"{secs:,.0f}"]
                )
                print(" | ".join(map(str, rows[-1])), file=sys.stderr)
            heads = [
                "workers",
                "peak MiB, 10 MB corpus",
                f"peak MiB, {mb:,.0f} MB corpus",
                "growth MiB",
                "seconds",
            ]
            print(table(heads, rows))


if __name__ == "__main__":
    main()
