"""Acceptance figures for export and streaming tokenization that are too big for the test suite.

    python benchmarks/interop.py export     # a GPT-2-small-shaped and a Llama-shaped model (~124M
                                            # parameters each, random weights) through
                                            # `steplab export --format hf`: max |logit diff|, greedy agreement
    python benchmarks/interop.py tokenize --gb 2 --workers 1 4   # a synthetic corpus of N GB:
                                            # tokens, MB/s and peak RSS growth per worker count

Needs the hf extra for `export`. `tokenize` timings are only meaningful on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from steplab import checkpoint as ckpt
from steplab.cli.main import main as cli
from steplab.config import ModelConfig, RunConfig, TokenizerConfig
from steplab.data.tokenizer import train_tokenizer
from steplab.generate import generate
from steplab.model import GPT, count_params


def export(root: Path) -> None:
    import transformers

    tok = train_tokenizer(
        ["First Citizen:\nBefore we proceed any further, hear me speak.\n"] * 50,
        TokenizerConfig(kind="bpe", vocab_size=512),
    )
    shapes = {
        "gpt2_small": ModelConfig(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304),
        "llama_124m": ModelConfig(
            n_layer=12,
            n_head=12,
            n_kv_head=4,
            n_embd=768,
            block_size=1024,
            vocab_size=50304,
            pos="rope",
            norm="rmsnorm",
            mlp="swiglu",
            bias=False,
            tie_embeddings=False,
        ),
    }
    for name, mcfg in shapes.items():
        torch.manual_seed(0)
        model = GPT(mcfg).eval()
        cfg = RunConfig()
        cfg.model, cfg.tokenizer = mcfg, TokenizerConfig(kind="bpe", vocab_size=512)
        run, out = root / name, root / f"{name}-hf"
        ckpt.save(run, model=model, optimizer=None, state=ckpt.TrainState(step=1), cfg=cfg, tokenizer=tok)
        assert cli(["export", str(run), "--out", str(out)]) == 0
        hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
        x = torch.randint(mcfg.vocab_size, (2, 256), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            diff = (model(x)[0] - hf(input_ids=x).logits).abs().max().item()
        prompt = x[0, :16]
        ours = list(generate(model, prompt, 32, temperature=0))
        theirs = hf.generate(prompt[None], max_new_tokens=32, do_sample=False)[0, 16:].tolist()
        print(
            json.dumps(
                {
                    "model": name,
                    "params": count_params(model),
                    "class": type(hf).__name__,
                    "max_abs_logit_diff": diff,
                    "greedy_32_equal": ours == theirs,
                }
            )
        )


MEASURE = """
import json, resource, sys, time
from steplab.config import DataConfig, TokenizerConfig
from steplab.data.cache import prepare
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
d = prepare(DataConfig(path=sys.argv[1], workers=int(sys.argv[2])), TokenizerConfig(kind=sys.argv[3]))
s = time.perf_counter() - t
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"workers": int(sys.argv[2]), "tokenizer": sys.argv[3], "tokens": d.meta["tokens"],
                  "seconds": round(s, 1), "rss_growth_mb": round((after - before) / 1024, 1)}))
"""


def tokenize(root: Path, gb: float, workers: list[int], kind: str) -> None:
    p = root / "corpus.txt"
    line = "First Citizen: before we proceed any further, hear me speak. Ωμέγα 東京 naïve café\n"
    block = line * 10_000
    with open(p, "w", encoding="utf-8") as fh:
        for _ in range(int(gb * 2**30 / len(block.encode("utf-8"))) + 1):
            fh.write(block)
    size_mb = p.stat().st_size / 1e6
    for w in workers:
        env = {
            "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
            "STEPLAB_CACHE": str(root / f"cache-{w}"),
            "PATH": "/usr/bin:/bin",
        }
        out = subprocess.run(
            [sys.executable, "-c", MEASURE, str(p), str(w), kind],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        r = json.loads(out.stdout)
        r["corpus_mb"], r["mb_per_s"] = round(size_mb), round(size_mb / max(r["seconds"], 1e-9), 1)
        print(json.dumps(r))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["export", "tokenize"])
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--tokenizer", default="byte", choices=["char", "byte", "bpe"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export(Path(tmp)) if args.what == "export" else tokenize(
            Path(tmp), args.gb, args.workers, args.tokenizer
        )
        print(
            f"# {time.perf_counter() - t0:.0f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        )
