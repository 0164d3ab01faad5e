"""--init-from: transformers models made here (random, perturbed, saved locally) load with the same logits,
fine-tune, resume bitwise, freeze into small checkpoints and export back to the same class."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from steplab import checkpoint as ckpt
from steplab.cli.main import main
from steplab.hf.families import PretrainedError
from steplab.hf.pretrained import apply, load_into
from steplab.loop.fit import train
from steplab.loop.session import build, evaluate
from steplab.model import GPT
from steplab.presets import get_preset

transformers = pytest.importorskip("transformers")

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\nnaïve café — 東京\n" * 20
NEW_TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n\n" * 60
SHAPE: dict[str, dict[str, Any]] = {
    "gpt2": {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 64},
    "llama": {
        "hidden_size": 32,
        "intermediate_size": 44,  # not a multiple of 8: taken as it is
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500.0},
    },
}
LLAMA_LIKE = {k: v for k, v in SHAPE["llama"].items() if k != "tie_word_embeddings"}
CASES = {
    "gpt2": ("gpt2", SHAPE["gpt2"]),
    "gpt2-untied-gelu": (
        "gpt2",
        {**SHAPE["gpt2"], "activation_function": "gelu", "tie_word_embeddings": False},
    ),
    "llama-gqa-untied": ("llama", SHAPE["llama"]),
    "llama-bias-tied": (
        "llama",
        {**LLAMA_LIKE, "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
    ),
    "qwen3": ("qwen3", {**LLAMA_LIKE, "head_dim": 8}),
    "arcee": ("arcee", {**LLAMA_LIKE, "hidden_act": "relu2"}),
    "apertus": ("apertus", {**LLAMA_LIKE, "hidden_act": "relu2", "tie_word_embeddings": True}),
}


def tokenizer_object() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator([TEXT], trainer=trainer)
    return tok


def make_pretrained(path: Path, model_type: str, shape: dict[str, Any], *, seed: int = 0) -> Path:
    """A transformers model with weights far from their init (norm gains, biases), saved as from the hub."""
    tok = tokenizer_object()
    no_special = {"bos_token_id": None, "eos_token_id": None, "pad_token_id": None}
    cfg = transformers.AutoConfig.for_model(
        model_type, vocab_size=tok.get_vocab_size(), **no_special, **shape
    )
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_pretrained(tmp_path_factory.mktemp("hf") / "llama", "llama", SHAPE["llama"])


def steplab_model(path: Path) -> GPT:
    cfg = get_preset("finetune")
    cfg.train.init_from = str(path)
    apply(cfg)
    model = GPT(cfg.model)
    load_into(model, str(path))
    return model.eval()


@pytest.mark.parametrize("case", list(CASES))
def test_imported_logits_equal_transformers(tmp_path: Path, case: str) -> None:
    model_type, shape = CASES[case]
    path = make_pretrained(tmp_path / case, model_type, shape)
    ours = steplab_model(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).eval()
    x = torch.randint(hf.config.vocab_size, (3, 64), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(x)[0], hf(input_ids=x).logits
    assert a.std() > 0.1
    assert (a - b).abs().max().item() < 1e-4


def data_file(tmp_path: Path) -> Path:
    p = tmp_path / "code.txt"
    p.write_text(NEW_TEXT)
    return p


def finetune_args(init: Path, data: Path, run: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--init-from",
        str(init),
        "--data",
        str(data),
        "--run-dir",
        str(run),
        "--quiet",
        "--train.tensorboard",
        "false",
        "--train.threads",
        "1",
        "--train.dtype",
        "float32",
        "--eval.max-windows",
        "16",
        *extra,
    ]


def test_twenty_steps_lower_the_loss_on_a_new_corpus(tmp_path: Path, llama_dir: Path) -> None:
    cfg = get_preset("finetune")
    cfg.train.init_from, cfg.data.path = str(llama_dir), str(data_file(tmp_path))
    cfg.train.max_steps, cfg.train.progress, cfg.train.tensorboard, cfg.train.dtype = (
        20,
        False,
        False,
        "float32",
    )
    cfg.eval.max_windows = 16
    before = evaluate(build(cfg))["val_loss"]
    result = train(cfg, tmp_path / "run")
    assert cfg.tokenizer.kind == "pretrained" and cfg.model.n_kv_head == 2 and cfg.model.block_size == 64
    assert result.final["val_loss"] < before - 0.3


def test_resume_is_bitwise(tmp_path: Path, llama_dir: Path) -> None:
    data = data_file(tmp_path)
    common = ("--train.max-steps", "8", "--checkpoint.every", "4", "--model.dropout", "0.1")
    assert main(finetune_args(llama_dir, data, tmp_path / "straight", *common)) == 0
    assert main(finetune_args(llama_dir, data, tmp_path / "cut", "--train.max-steps", "4", *common[2:])) == 0
    assert main(finetune_args(llama_dir, data, tmp_path / "cut", *common, "--resume")) == 0
    a = load_file(str(ckpt.latest(tmp_path / "straight") / "model.safetensors"))
    b = load_file(str(ckpt.latest(tmp_path / "cut") / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_goes_back_to_the_same_class(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_pretrained(tmp_path / "arcee", "arcee", CASES["arcee"][1])
    run, out = tmp_path / "run", tmp_path / "out"
    assert main(finetune_args(source, data_file(tmp_path), run, "--train.max-steps", "3")) == 0
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert "as ArceeForCausalLM" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["ArceeForCausalLM"] and cfg["hidden_act"] == "relu2"
    # Fine-tuned weights went out as they are: steplab's checkpoint mapped equals what transformers holds.
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    again = steplab_model(out)
    theirs = hf.state_dict()
    mine = ckpt.load(ckpt.latest(run), with_optimizer=False).weights
    assert torch.equal(again.state_dict()["blocks.1.mlp.fc.weight"], mine["blocks.1.mlp.fc.weight"])
    assert torch.equal(theirs["model.layers.1.mlp.up_proj.weight"], mine["blocks.1.mlp.fc.weight"])


def test_import_then_export_is_the_identity(tmp_path: Path) -> None:
    """No training in between: every tensor of the export equals the original file's."""
    from steplab.data.tokenizer import from_json
    from steplab.tools.export import export_hf

    for case in ("gpt2", "llama-gqa-untied", "apertus"):
        model_type, shape = CASES[case]
        source = make_pretrained(tmp_path / case, model_type, shape)
        tok = from_json({"kind": "pretrained", "hf": json.loads((source / "tokenizer.json").read_text())})
        export_hf(steplab_model(source), tok, tmp_path / f"{case}-out", tolerance=1e-5)
        a, b = (
            load_file(str(source / "model.safetensors")),
            load_file(str(tmp_path / f"{case}-out" / "model.safetensors")),
        )
        assert a.keys() == b.keys(), case
        assert all(torch.equal(a[k], b[k]) for k in a), case


def test_freezing_keeps_the_checkpoint_small_and_resumes_exactly(tmp_path: Path, llama_dir: Path) -> None:
    data = data_file(tmp_path)
    freeze = ("--train.freeze", "wte,blocks.0.*,lm_head")
    common = ("--train.max-steps", "6", "--checkpoint.every", "3", *freeze)
    assert main(finetune_args(llama_dir, data, tmp_path / "straight", *common)) == 0
    assert main(finetune_args(llama_dir, data, tmp_path / "cut", "--train.max-steps", "3", *common[2:])) == 0
    assert main(finetune_args(llama_dir, data, tmp_path / "cut", *common, "--resume")) == 0
    path = ckpt.latest(tmp_path / "straight")
    stored = load_file(str(path / "model.safetensors"))
    assert sorted(stored) == sorted(json.loads((path / "base.json").read_text())["trainable"])
    assert not any(k.startswith(("wte", "lm_head", "blocks.0.")) for k in stored)
    assert any(k.startswith("blocks.1.") for k in stored)
    again = load_file(str(ckpt.latest(tmp_path / "cut") / "model.safetensors"))
    assert all(torch.equal(stored[k], again[k]) for k in stored)
    # The loaded checkpoint is whole again: frozen weights are the base's, unchanged.
    full = ckpt.load(path, with_optimizer=False).weights
    base = steplab_model(llama_dir).state_dict()
    assert torch.equal(full["blocks.0.attn.qkv.weight"], base["blocks.0.attn.qkv.weight"])
    assert not torch.equal(full["blocks.1.attn.qkv.weight"], base["blocks.1.attn.qkv.weight"])
    optim = torch.load(path / "optimizer.pt", weights_only=True)
    assert sum(len(g["params"]) for g in optim["param_groups"]) == len(stored)


def test_a_changed_base_is_refused(tmp_path: Path) -> None:
    source = make_pretrained(tmp_path / "base", "llama", SHAPE["llama"])
    run = tmp_path / "run"
    args = finetune_args(source, data_file(tmp_path), run, "--train.max-steps", "2", "--train.freeze", "wte")
    assert main(args) == 0
    make_pretrained(source, "llama", SHAPE["llama"], seed=1)  # the same directory, other weights
    with pytest.raises(ckpt.CheckpointError, match="has changed since this checkpoint"):
        ckpt.load(ckpt.latest(run), with_optimizer=False)


def test_freeze_patterns_are_checked(
    tmp_path: Path, llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    data = data_file(tmp_path)
    assert main(finetune_args(llama_dir, data, run, "--train.freeze", "h.0.*")) == 2
    assert "'h.0.*' matches no parameter (names look like wte.weight" in capsys.readouterr().err
    assert main(finetune_args(llama_dir, data, run, "--train.freeze", "*")) == 2
    assert "freezes every parameter" in capsys.readouterr().err


def _edit_config(path: Path, **changes: Any) -> None:
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}, "model_type 'qwen2'"),
        (
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}},
            "rope_type 'linear': steplab implements default RoPE only",
        ),
        ({"head_dim": 16}, "head_dim 16: steplab's heads are hidden_size/num_attention_heads"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu': steplab's gated MLP is SwiGLU"),
        ({"attention_bias": True}, "attention_bias != mlp_bias"),
    ],
)
def test_unsupported_configs_are_refused_by_name(
    tmp_path: Path, llama_dir: Path, edit: dict, message: str
) -> None:
    import shutil

    path = tmp_path / "edited"
    shutil.copytree(llama_dir, path)
    _edit_config(path, **edit)
    cfg = get_preset("finetune")
    cfg.train.init_from = str(path)
    with pytest.raises(PretrainedError, match=message):
        apply(cfg)


def test_what_is_not_a_local_model_is_refused(
    tmp_path: Path, llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    data = data_file(tmp_path)
    assert main(finetune_args(Path("meta-llama/Llama-3.2-1B"), data, tmp_path / "r")) == 2
    assert "steplab never downloads" in capsys.readouterr().err
    path = tmp_path / "bin"
    shutil.copytree(llama_dir, path)
    (path / "model.safetensors").rename(path / "pytorch_model.bin")
    assert main(finetune_args(path, data, tmp_path / "r")) == 2
    assert "pickled weights can run code" in capsys.readouterr().err
    (path / "tokenizer.json").unlink()
    assert main(finetune_args(path, data, tmp_path / "r")) == 2
    assert "has no tokenizer.json" in capsys.readouterr().err
    assert main(finetune_args(llama_dir, data, tmp_path / "r", "--model.n-layer", "3")) == 2
    assert "--model.n-layer: the architecture comes from --init-from" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_lora_checkpoints_hold_only_adapters_resume_exactly_and_export_merged(
    tmp_path: Path, llama_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("peft")
    data = data_file(tmp_path)
    lora = ("--train.lora-rank", "4", "--train.lora-alpha", "8", "--optim.lr", "3e-3")
    common = ("--train.max-steps", "6", "--checkpoint.every", "3", *lora)
    assert main(finetune_args(llama_dir, data, tmp_path / "straight", *common)) == 0
    assert main(finetune_args(llama_dir, data, tmp_path / "cut", "--train.max-steps", "3", *common[2:])) == 0
    assert main(finetune_args(llama_dir, data, tmp_path / "cut", *common, "--resume")) == 0
    path = ckpt.latest(tmp_path / "straight")
    stored = load_file(str(path / "model.safetensors"))
    assert stored and all(".lora_A." in k or ".lora_B." in k for k in stored)
    assert len(stored) == 2 * 4 * 2  # A and B on qkv, attn.proj, mlp.fc, mlp.proj of 2 blocks
    again = load_file(str(ckpt.latest(tmp_path / "cut") / "model.safetensors"))
    assert all(torch.equal(stored[k], again[k]) for k in stored)
    assert any(v.abs().max() > 0 for k, v in stored.items() if ".lora_B." in k)  # the adapters trained
    # Export merges the adapters: transformers computes what steplab's LoRA model computed.
    out = tmp_path / "out"
    assert main(["export", "--run", str(tmp_path / "straight"), "--out", str(out)]) == 0
    assert "as LlamaForCausalLM" in capsys.readouterr().out
    cfg = get_preset("finetune")
    cfg.train.init_from, cfg.data.path, cfg.train.lora_rank, cfg.train.lora_alpha = (
        str(llama_dir),
        str(data),
        4,
        8.0,
    )
    s = build(cfg)
    ckpt.restore(path, model=s.model, optimizer=None, tokenizer=s.data.tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = torch.randint(hf.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert (s.model.eval()(x)[0] - hf(input_ids=x).logits).abs().max().item() < 1e-4


def test_lora_needs_a_pretrained_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--preset", "tiny", "--train.lora-rank", "4", "--print-config"]) == 2
    assert "--train.lora-rank adapts a pretrained model" in capsys.readouterr().err
