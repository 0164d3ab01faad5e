"""Config: one schema for flags, TOML and Python; every bad value is one clear line, exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from steplab.cli.main import main
from steplab.config import RunConfig, dump_toml, load_toml, set_value
from steplab.errors import ConfigError
from steplab.presets import PRESETS, get_preset


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse errors
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_toml_round_trip(tmp_path: Path) -> None:
    cfg = get_preset("llama_char")
    cfg.optim.lr = 3e-3
    cfg.train.max_seconds = 12.5
    p = tmp_path / "c.toml"
    p.write_text(dump_toml(cfg))
    assert load_toml(p) == cfg


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name: str) -> None:
    cfg = get_preset(name)
    assert cfg.validate() is cfg
    assert cfg.preset == name


def test_flags_override_preset_and_shorthands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(
        capsys,
        "train",
        "--preset",
        "shakespeare_char",
        "--optim.lr",
        "3e-3",
        "--train.max-seconds",
        "60",
        "--tokenizer",
        "bpe",
        "--tokenizer.vocab-size",
        "512",
        "--train.compile",
        "--model.n_kv_head",
        "2",
        "--print-config",
    )
    assert code == 0
    assert 'preset = "shakespeare_char"' in out
    assert "lr = 0.003" in out and "max_seconds = 60.0" in out
    assert 'kind = "bpe"' in out and "vocab_size = 512" in out
    assert "compile = true" in out and "n_kv_head = 2" in out


def test_config_file_then_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "my.toml"
    p.write_text('[optim]\nlr = 0.01\nname = "sgd"\n[train]\nbatch_size = 4\n')
    code, out, _ = run_cli(capsys, "train", "--config", str(p), "--train.batch-size", "6", "--print-config")
    assert code == 0
    assert "lr = 0.01" in out and 'name = "sgd"' in out and "batch_size = 6" in out


def test_auto_lr_is_accepted() -> None:
    cfg = RunConfig()
    set_value(cfg, "optim.lr", "auto")
    assert cfg.optim.lr == "auto"


BAD_FLAGS = [
    (["--optim.lr", "-1"], "--optim.lr must be > 0 (got -1)"),
    (["--optim.lr", "0"], "--optim.lr must be > 0"),
    (["--optim.lr", "fast"], "--optim.lr must be"),
    (["--train.batch-size", "0"], "--train.batch-size must be >= 1 (got 0)"),
    (["--train.batch-size", "2.5"], "--train.batch-size must be int"),
    (["--train.max-steps", "-5"], "--train.max-steps must be >= 1"),
    (["--train.max-seconds", "0"], "--train.max-seconds must be > 0"),
    (["--model.norm", "batchnorm"], "--model.norm must be one of layernorm, rmsnorm (got 'batchnorm')"),
    (
        ["--tokenizer", "wordpiece"],
        "--tokenizer must be one of char, byte, bpe, pretrained or a tokenizer.json path",
    ),
    (["--tokenizer.kind", "wordpiece"], "--tokenizer.kind must be one of char, byte, bpe, pretrained"),
    (["--optim.name", "adamx"], "unknown optimizer 'adamx' (valid:"),
    (["--schedule", "triangle"], "unknown schedule 'triangle' (valid:"),
    (["--model.n-embd", "30", "--model.n-head", "4"], "must be divisible by --model.n-head"),
    (["--model.dropout", "1.5"], "--model.dropout must be < 1"),
    (["--train.compile", "maybe"], "--train.compile must be bool"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--train.max-steps", "none"], "no budget"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_values_are_one_line_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "train", *argv, "--print-config")
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert out == ""


def test_unknown_flag_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "--optim.lrr", "3")
    assert code == 2
    assert "unknown flag --optim.lrr (did you mean --optim.lr?" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[optim]\nlrr = 1.0\n", "unknown setting my.toml: optim.lrr"),
        ("[optimizer]\nlr = 1.0\n", "unknown section [optimizer]"),
        ('[train]\nbatch_size = "big"\n', "train.batch_size must be int (got 'big')"),
        ("[optim]\nlr = -0.1\n", "--optim.lr must be > 0"),
        ("[optim\nlr = 1\n", "not valid TOML"),
    ],
)
def test_bad_config_files(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "my.toml"
    p.write_text(text)
    code, _, err = run_cli(capsys, "train", "--config", str(p), "--print-config")
    assert code == 2
    assert message in err.replace(str(tmp_path) + "/", "")
    assert err.count("\n") == 1


def test_missing_config_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "train", "--config", "/nonexistent/x.toml")
    assert code == 2 and "config file not found" in err


def test_set_value_rejects_unknown_keys() -> None:
    with pytest.raises(ConfigError, match="valid in optim"):
        set_value(RunConfig(), "optim.learning_rate", 1.0)


def test_import_pulls_no_optional_dependency() -> None:
    import subprocess
    import sys

    code = (
        "import sys, steplab, steplab.config, steplab.cli;"
        "heavy = {'torch', 'optuna', 'matplotlib', 'transformers', 'tensorboard', 'wandb', 'datasets', 'tokenizers'};"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


BUDGETS = {
    "steps": {"max_steps": 300, "max_tokens": None, "max_seconds": None},
    "tokens": {"max_steps": None, "max_tokens": 123_456, "max_seconds": None},
    "seconds": {"max_steps": None, "max_tokens": None, "max_seconds": 42.5},
    "none": {"max_steps": None, "max_tokens": None, "max_seconds": None},
}


@pytest.mark.parametrize("budget", sorted(BUDGETS))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_config_round_trips_through_dict_and_toml(preset: str, budget: str, tmp_path: Path) -> None:
    from steplab.config import dump_toml, from_dict, load_toml, to_dict

    cfg = PRESETS[preset]()
    for k, v in BUDGETS[budget].items():
        setattr(cfg.train, k, v)
    assert from_dict(to_dict(cfg)) == cfg
    (tmp_path / "c.toml").write_text(dump_toml(cfg))
    assert load_toml(tmp_path / "c.toml") == cfg
    assert load_toml(tmp_path / "c.toml", base=PRESETS["gpt2_small"]()) == cfg  # whatever it is read onto


def test_a_seconds_budget_run_resumes_with_its_own_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import tomllib

    from steplab.cli import main
    from steplab.config import dump_toml

    cfg = PRESETS["tiny"]()
    cfg.train.max_steps, cfg.train.max_seconds = None, 30.0
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(dump_toml(cfg))
    assert main(["train", "--run-dir", str(run), "--resume", "--print-config"]) == 0
    train = tomllib.loads(capsys.readouterr().out)["train"]
    assert train["max_steps"] == "none" and train["max_seconds"] == 30.0


def test_the_bare_config_does_not_call_itself_a_preset() -> None:
    assert RunConfig().preset not in PRESETS
