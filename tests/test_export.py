"""Export: transformers reloads what steplab wrote with the same logits, tokens and greedy text."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.config import ModelConfig, RunConfig, TokenizerConfig
from steplab.data.tokenizer import Tokenizer, train_tokenizer
from steplab.generate import generate
from steplab.model import GPT
from steplab.presets import get_preset
from steplab.tools.export import ExportError, export_safetensors, family_for, load_safetensors

CORPUS = ["First Citizen:\nBefore we proceed any further, hear me speak.\n", "naïve café — 東京 🎉\n"] * 30
LLAMA = {"pos": "rope", "norm": "rmsnorm", "mlp": "swiglu", "bias": False}


def tiny_model(vocab_size: int, **kw: object) -> GPT:
    """A random model whose weights are far from their init (norm gains, biases and all)."""
    shape = {"n_layer": 2, "n_head": 4, "n_embd": 32, "block_size": 48, **kw}
    cfg = ModelConfig(vocab_size=vocab_size, **shape)  # type: ignore[arg-type]
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


def save_run(run: Path, model: GPT, tok: Tokenizer) -> None:
    cfg = RunConfig()
    cfg.model = model.cfg
    cfg.tokenizer = TokenizerConfig(kind=tok.kind, vocab_size=max(257, tok.vocab_size))  # type: ignore[arg-type]
    ckpt.save(run, model=model, optimizer=None, state=ckpt.TrainState(step=7), cfg=cfg, tokenizer=tok)


@pytest.mark.parametrize(
    ("kw", "family"),
    [
        (LLAMA, "llama"),
        ({**LLAMA, "n_kv_head": 1, "tie_embeddings": False, "bias": True}, "llama"),
        ({**LLAMA, "qk_norm": True}, "qwen3"),
        ({**LLAMA, "mlp": "relu2", "bias": True}, "arcee"),
        ({**LLAMA, "mlp": "gelu_tanh", "qk_norm": True}, "apertus"),
        ({}, "gpt2"),
        ({"mlp": "gelu_tanh"}, "gpt2"),
        ({"bias": False, "tie_embeddings": False}, "gpt2"),
        ({"parametrization": "mup", "tie_embeddings": False}, "gpt2"),
    ],
)
def test_families(kw: dict, family: str) -> None:
    assert family_for(ModelConfig(**kw)).name == family


@pytest.mark.parametrize(
    ("preset", "cls"),
    [
        ("default", "ArceeForCausalLM"),
        ("speedrun_cpu", "ApertusForCausalLM"),
        ("llama_char", "LlamaForCausalLM"),
    ],
)
def test_the_flagship_presets_export(preset: str, cls: str) -> None:
    assert family_for(get_preset(preset).model).cls == cls


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"pos": "rope"}, r"ArceeForCausalLM, --model.norm layernorm \(needs rmsnorm\)"),
        ({"mlp": "swiglu"}, r"GPT2LMHeadModel, --model.mlp swiglu \(needs gelu or gelu_tanh or relu2\)"),
        ({**LLAMA, "norm": "layernorm"}, r"LlamaForCausalLM, --model.norm layernorm \(needs rmsnorm\)"),
        ({"qk_norm": True}, r"GPT2LMHeadModel, --model.qk-norm true \(needs false\)"),
        ({**LLAMA, "qk_norm": True, "bias": True}, r"--model.bias true: Qwen3ForCausalLM"),
        ({"n_kv_head": 2}, "--model.n-kv-head 2"),
        ({"parametrization": "mup", "n_embd": 256}, "--model.tie-embeddings true"),
        (
            {**LLAMA, "unet_skips": True, "logit_softcap": 15.0},
            "--model.logit-softcap 15.0, --model.unet-skips True",
        ),
        ({"value_embeds": 1}, "--model.value-embeds 1: no transformers equivalent"),
    ],
)
def test_settings_without_an_equivalent_are_named(kw: dict, message: str) -> None:
    with pytest.raises(ExportError, match=message) as e:
        family_for(ModelConfig(**kw))
    if "muP" not in str(e.value):
        assert "(presets that export: default, shakespeare_char, speedrun_cpu" in str(e.value)


def test_safetensors_export_round_trips(tmp_path: Path) -> None:
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind="char"))
    model = tiny_model(tok.vocab_size, **LLAMA)
    export_safetensors(model, tok, tmp_path / "st")
    again, tok2 = load_safetensors(tmp_path / "st")
    x = torch.randint(tok.vocab_size, (2, 16))
    assert torch.equal(model(x)[0], again(x)[0])
    assert tok2.to_json() == tok.to_json()
    with pytest.raises(ExportError, match="not a steplab safetensors export"):
        load_safetensors(tmp_path)


def test_cli_export_safetensors_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind="byte"))
    save_run(tmp_path / "run", tiny_model(256, pos="rope", norm="layernorm", mlp="relu2"), tok)
    out = tmp_path / "out"
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "safetensors", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "steplab-export.json",  # the marker: the files steplab wrote (what a later --overwrite may replace)
    }
    capsys.readouterr()
    assert main(["export", "--run", str(tmp_path / "run"), "--format", "safetensors", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 2
    assert "--model.norm layernorm (needs rmsnorm)" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


# --- transformers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "kw", "cls"),
    [
        ("bpe", {**LLAMA, "tie_embeddings": False, "n_kv_head": 2, "rope_theta": 500.0}, "LlamaForCausalLM"),
        ("byte", {**LLAMA, "bias": True, "norm_eps": 1e-6}, "LlamaForCausalLM"),
        ("char", {}, "GPT2LMHeadModel"),
        (
            "byte",
            {"bias": False, "tie_embeddings": False, "parametrization": "mup", "mup_base_width": 16},
            "GPT2LMHeadModel",
        ),
        ("char", {"mlp": "gelu_tanh", "tie_embeddings": False}, "GPT2LMHeadModel"),
        ("byte", {**LLAMA, "mlp": "relu2"}, "ArceeForCausalLM"),
        (
            "bpe",
            {**LLAMA, "mlp": "gelu", "bias": True, "n_kv_head": 2, "tie_embeddings": False},
            "ArceeForCausalLM",
        ),
        ("char", {**LLAMA, "mlp": "relu2", "qk_norm": True}, "ApertusForCausalLM"),
        ("byte", {**LLAMA, "qk_norm": True, "n_kv_head": 1, "tie_embeddings": False}, "Qwen3ForCausalLM"),
        (
            "byte",
            {
                **LLAMA,
                "mlp": "relu2",
                "qk_norm": True,
                "tie_embeddings": False,
                "parametrization": "mup",
                "mup_base_width": 16,
            },
            "ApertusForCausalLM",
        ),
    ],
    ids=[
        "llama-bpe-gqa-untied",
        "llama-byte-bias-tied",
        "gpt2-char",
        "gpt2-byte-nobias-mup-untied",
        "gpt2-char-tanh-untied",
        "arcee-byte-relu2",
        "arcee-bpe-gelu-bias-gqa-untied",
        "apertus-char-relu2-qknorm",
        "qwen3-byte-qknorm-mqa-untied",
        "apertus-byte-mup-untied",
    ],
)
def test_transformers_loads_the_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, kw: dict, cls: str
) -> None:
    transformers = pytest.importorskip("transformers")
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind=kind, vocab_size=300))  # type: ignore[arg-type]
    model = tiny_model(tok.vocab_size, **kw)
    run, out = tmp_path / "run", tmp_path / "hf"
    save_run(run, model, tok)
    assert main(["export", "--run", str(run), "--format", "hf", "--out", str(out)]) == 0
    assert cls in capsys.readouterr().out

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == cls
    x = torch.randint(tok.vocab_size, (3, model.cfg.block_size), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(x)[0], hf(input_ids=x).logits
    assert ours.std() > 0.1  # a model with something to get wrong
    assert (ours - theirs).abs().max().item() < 1e-4

    text = CORPUS[0] + CORPUS[1]
    ids = tok.encode(text)
    assert hf_tok(text, add_special_tokens=False)["input_ids"] == ids
    assert hf_tok.decode(ids) == tok.decode(ids) == text

    # Greedy decoding agrees token for token (prompt + new tokens within the context).
    prompt = tok.encode("First Citizen:")
    n_new = model.cfg.block_size - len(prompt)
    ours_ids = list(generate(model, torch.tensor(prompt), n_new, temperature=0))
    theirs_ids = hf.generate(torch.tensor([prompt]), max_new_tokens=n_new, do_sample=False)[0, len(prompt) :]
    assert theirs_ids.tolist() == ours_ids
    if kind == "char":  # every token is whole text: `steplab sample` prints what transformers decodes
        args = [
            "sample",
            "--run",
            str(run),
            "--prompt",
            "First Citizen:",
            "--temperature",
            "0",
            "--device",
            "cpu",
        ]
        assert main([*args, "--max-new-tokens", str(n_new)]) == 0
        assert capsys.readouterr().out == "First Citizen:" + hf_tok.decode(theirs_ids) + "\n"


@pytest.mark.parametrize("preset", ["default", "speedrun_cpu"])
def test_the_flagship_models_load_in_transformers(tmp_path: Path, preset: str) -> None:
    """The models `make run` and the speedrun train, at their own shape, with trained-looking weights."""
    transformers = pytest.importorskip("transformers")
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind="char"))
    shape = {k: v for k, v in dataclasses.asdict(get_preset(preset).model).items() if k != "vocab_size"}
    model = tiny_model(tok.vocab_size, **shape)
    run, out = tmp_path / "run", tmp_path / "hf"
    save_run(run, model, tok)
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(tok.vocab_size, (2, model.cfg.block_size), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x)[0] - hf(input_ids=x).logits).abs().max().item() < 1e-4
    prompt = tok.encode("First Citizen:")
    ours = list(generate(model, torch.tensor(prompt), 40, temperature=0))
    theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt) :]
    assert theirs.tolist() == ours


def test_an_unfaithful_export_never_lands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    from steplab.tools import export

    def tanh_gelu(cfg: ModelConfig, family: object) -> object:
        c = real(cfg, family)
        c.activation_function = "gelu_new"  # GPT-2's tanh approximation: close, not equal
        return c

    real = export.hf_config
    monkeypatch.setattr(export, "hf_config", tanh_gelu)
    tok = train_tokenizer(CORPUS, TokenizerConfig(kind="byte"))
    with pytest.raises(ExportError, match="logits differ from steplab's"):
        export.export_hf(tiny_model(256), tok, tmp_path / "hf", tolerance=1e-4)
    assert list(tmp_path.iterdir()) == []
