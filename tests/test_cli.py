"""The command line: typed options for every command, honest help, and bad input as one line
(what, where, what to do), exit 2, nothing overwritten.

Config values are covered in test_config.py and checkpoints in test_checkpoint.py; this file
drives the corpus mistakes and the run directory through `steplab train` itself, and every
command's options through the generated parser. The surface is frozen in test_cli_surface.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from helpers import cli
from steplab.cli.main import COMMANDS, GROUPS, main
from steplab.cli.parser import parse
from steplab.errors import ConfigError

TRAIN = ["train", "--preset", "tiny", "--quiet", "--train.tensorboard", "false"]


def jsonl(*lines: str) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / "c.jsonl"
        p.write_text("\n".join(lines) + "\n")
        return p

    return make


def text(data: bytes, name: str = "c.txt") -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        p = d / name
        p.write_bytes(data)
        return p

    return make


BAD_CORPORA = [
    (
        "missing-path",
        lambda d: d / "nope.txt",
        [],
        "nope.txt does not exist (pass a text, .jsonl, .csv or .parquet file, a directory, or a dataset saved with save_to_disk)",
    ),
    ("empty-corpus", text(b""), [], "is empty (no text to train on)"),
    ("empty-directory", lambda d: (d / "sub").mkdir() or d / "sub", [], "holds no text files"),
    (
        "shorter-than-a-window",
        text(b"to be or not to be, that is the question. " * 3),
        ["--model.block-size", "128"],
        "fewer than one context window (129); use more text or a smaller --model.block-size",
    ),
    (
        "not-utf8",
        text(b"caf\xe9 au lait " * 50),
        [],
        "not UTF-8 at byte 3 (re-encode the file, or pass --data.errors replace)",
    ),
    (
        "jsonl-missing-field",
        jsonl('{"text": "ok ok ok"}', '{"body": "no"}'),
        [],
        "c.jsonl:2: no 'text' field",
    ),
    (
        "jsonl-broken-line",
        jsonl('{"text": "ok"}', '{"text": "ok"}', '{"text": broken'),
        [],
        "c.jsonl:3: broken JSON",
    ),
]


@pytest.mark.parametrize(
    ("make", "extra", "message"), [c[1:] for c in BAD_CORPORA], ids=[c[0] for c in BAD_CORPORA]
)
def test_bad_corpus_is_one_line_exit_2_and_creates_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], Path],
    extra: list[str],
    message: str,
) -> None:
    corpus = make(tmp_path)
    run = tmp_path / "run"
    code, out, err = cli(capsys, *TRAIN, "--data", str(corpus), *extra, "--run-dir", str(run))
    assert code == 2
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not run.exists()  # the run directory is created only once the corpus and config are good


def test_non_utf8_is_accepted_with_replace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = text(b"caf\xe9 au lait " * 200)(tmp_path)
    code, out, err = cli(
        capsys,
        *TRAIN,
        "--data",
        str(corpus),
        "--data.errors",
        "replace",
        "--train.max-steps",
        "2",
        "--run-dir",
        str(tmp_path / "r"),
    )
    assert code == 0 and "finished: 2 steps" in out


@pytest.fixture
def finished_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    run = tmp_path / "run"
    assert main([*TRAIN, "--train.max-steps", "3", "--run-dir", str(run)]) == 0
    capsys.readouterr()
    return run


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_existing_run_dir_without_resume_or_overwrite(
    finished_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(finished_run)
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(finished_run))
    assert code == 2 and err.count("\n") == 1
    assert (
        f"run directory {finished_run} already holds a run; pass --resume to continue it, --overwrite" in err
    )
    assert snapshot(finished_run) == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "/nonexistent/corpus.txt"], "does not exist"),
        (["--optim.lr", "-1"], "--optim.lr must be > 0"),
        (["--optim.name", "adamx"], "unknown optimizer 'adamx'"),
    ],
    ids=["bad-corpus", "bad-value", "unknown-optimizer"],
)
def test_overwrite_with_bad_input_keeps_the_old_run(
    finished_run: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    before = snapshot(finished_run)
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(finished_run), "--overwrite", *argv)
    assert code == 2 and message in err and err.count("\n") == 1
    assert snapshot(finished_run) == before


def test_run_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = cli(capsys, *TRAIN, "--run-dir", str(tmp_path / "file"))
    assert code == 2 and "is a file, not a directory" in err


def test_zero_token_budget_and_bad_guard_settings(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["--train.max-tokens", "0"], "--train.max-tokens must be >= 1 (got 0)"),
        (["--guard.policy", "pray"], "--guard.policy must be one of off, stop, skip, rollback (got 'pray')"),
        (["--guard.lr-factor", "2"], "--guard.lr-factor must be <= 1 (got 2)"),
    ]:
        code, out, err = cli(capsys, *TRAIN, *argv, "--print-config")
        assert code == 2 and message in err and err.count("\n") == 1 and not out


# --- every command generated from typed options ------------------------------------------------


# The least each command needs (its required values).
MINIMAL = {
    "sample": ["r"],
    "eval": ["r"],
    "plot": ["r"],
    "report": ["r"],
    "export": ["r", "--out", "o"],
    "doctor": ["r"],
    "tune": ["--space", "s.toml"],
    "transfer": ["--from", "best.toml", "--width", "64"],
}


@pytest.mark.parametrize("command", COMMANDS, ids=[c.name for c in COMMANDS])
def test_every_command_parses_into_its_options_dataclass(command) -> None:  # noqa: ANN001
    parsed = parse([*command.name.split(), *MINIMAL.get(command.name, [])], COMMANDS, GROUPS)
    assert parsed.command is command and type(parsed.options) is command.options


def options(*argv: str):  # noqa: ANN201
    return parse(list(argv), COMMANDS, GROUPS).options


def test_options_are_typed() -> None:
    s = options("sample", "r", "--top-k", "5", "--top-p", "0.9", "--seed", "3", "--temperature", "0")
    assert (s.run, s.top_k, s.top_p, s.seed, s.temperature, s.max_new_tokens) == ("r", 5, 0.9, 3, 0.0, 300)
    assert options("coord-check", "--widths", "32,64", "128").widths == [32, 64, 128]
    c = options("compare", "--vary", "optim.name=adamw,sgd", "--vary", "model.mlp=gelu", "--seeds", "2")
    assert c.vary == ["optim.name=adamw,sgd", "model.mlp=gelu"] and c.seeds == 2 and c.overwrite is False
    c = options("compare", "--variant", "a", "optim.lr=1e-3", "--variant", "b", "optim.name=sgd", "--quiet")
    assert c.variant == [["a", "optim.lr=1e-3"], ["b", "optim.name=sgd"]] and c.quiet is True
    t = options("train", "--optim.lr", "3e-3", "--data", "x.txt", "--resume", "--run-dir", "d")
    assert t.resume is True and t.settings == {"optim.lr": "3e-3", "data.path": "x.txt"}
    assert options("transfer", "--from", "b.toml", "--width", "64").source == "b.toml"


def test_run_is_positional_or_a_flag_everywhere() -> None:
    assert options("sample", "r").run == options("sample", "--run", "r").run == "r"
    assert options("export", "--run", "r", "--out", "o").run == "r"
    assert options("doctor", "--run", "r").run == "r"
    assert options("plot", "a", "--run", "b", "c").runs == ["a", "b", "c"]
    assert options("report", "--run", "a", "--run", "b").runs == ["a", "b"]
    assert options("batch-find", "r").run == options("batch-find", "--run", "r").run == "r"
    with pytest.raises(ConfigError, match="RUN is given twice"):
        options("sample", "a", "--run", "b")


BAD_OPTIONS = [
    (["sample", "r", "--max-new-tokens", "-1"], "--max-new-tokens must be >= 0 (got -1)"),
    (["sample", "r", "--top-p", "2"], "--top-p must be <= 1 (got 2)"),
    (["sample", "r", "--temperature", "hot"], "--temperature must be float (got 'hot')"),
    (["sample", "r", "--checkpoint", "first"], "--checkpoint must be one of latest, best (got 'first')"),
    (["sample"], "steplab sample needs RUN (run directory)"),
    (["eval", "r", "--max-windows", "0"], "--max-windows must be >= 1 (got 0)"),
    (
        ["export", "r", "--out", "o", "--format", "onnx"],
        "--format must be one of hf, safetensors (got 'onnx')",
    ),
    (["export", "r"], "steplab export needs --out"),
    (["plot", "r", "--smoothing", "1"], "--smoothing must be < 1 (got 1)"),
    (["report", "r", "--samples", "-1"], "--samples must be >= 0 (got -1)"),
    (["runs", "--sort", "size"], "--sort must be one of loss, name, started (got 'size')"),
    (["lr-find", "--steps", "5"], "--steps must be >= 10 (got 5)"),
    (["batch-find", "--memory-fraction", "0"], "--memory-fraction must be > 0 (got 0)"),
    (["batch-find", "--micro-batches", "1"], "--micro-batches must be >= 2 (got 1)"),
    (["tune", "--space", "s.toml", "--trials", "0"], "--trials must be >= 1 (got 0)"),
    (["tune"], "steplab tune needs --space"),
    (["coord-check", "--widths", "64,x"], "--widths must be int (got 'x')"),
    (["transfer", "--from", "b.toml", "--width", "0"], "--width must be >= 1 (got 0)"),
    (["compare", "--seeds", "0"], "--seeds must be >= 1 (got 0)"),
    (["compare", "--target-loss", "-1"], "--target-loss must be > 0 (got -1)"),
    (["train", "--nproc", "0"], "--nproc must be >= 1 (got 0)"),
    (["train", "--resume", "auto"], "unexpected argument 'auto'"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_one_line_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, *argv)
    assert code == 2 and not out
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


# --- one budget vocabulary -----------------------------------------------------------------------


def budget(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    import tomllib

    code, out, err = cli(capsys, *argv, "--print-config")
    assert code == 0, err
    t = tomllib.loads(out)["train"]
    return {k: t[k] for k in ("max_steps", "max_tokens", "max_seconds")}


def test_a_budget_flag_replaces_the_presets_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert budget(capsys, "train") == {"max_steps": 600, "max_tokens": "none", "max_seconds": "none"}
    assert budget(capsys, "train", "--train.max-seconds", "60") == {
        "max_steps": "none",
        "max_tokens": "none",
        "max_seconds": 60.0,
    }
    both = budget(capsys, "train", "--train.max-steps", "10", "--train.max-tokens", "1e5")
    assert both == {"max_steps": 10, "max_tokens": 100000, "max_seconds": "none"}
    (tmp_path / "b.toml").write_text("[train]\nmax_tokens = 5000\n")  # a config file is a layer too
    assert budget(capsys, "train", "--config", str(tmp_path / "b.toml"))["max_steps"] == "none"
    assert budget(capsys, "train", "--train.batch-size", "4")["max_steps"] == 600  # not a budget flag


@pytest.mark.parametrize("old", ["--budget-steps", "--budget-tokens", "--budget-seconds"])
@pytest.mark.parametrize("command", ["compare", "tune"])
def test_old_budget_flags_name_their_new_spelling(
    old: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, command, old, "10")
    new = old.replace("--budget-", "--train.max-")
    assert code == 2 and f"steplab {command}: {old} is now {new}" in err and err.count("\n") == 1


# --- honest help ---------------------------------------------------------------------------------


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, _ = cli(capsys, *argv, "--help")
    assert code == 0
    return " ".join(out.split())  # unwrapped: one line per flag is not guaranteed at any width


def test_train_help_shows_the_default_presets_values_and_ranges(capsys: pytest.CaptureFixture[str]) -> None:
    from steplab.presets import default

    text = help_text(capsys, "train")
    d = default()  # learned/layernorm/gelu/64/1e-3/2000/cosine are the dataclass defaults, not used
    assert (d.model.pos, d.model.norm, d.model.mlp) == ("rope", "rmsnorm", "relu2")
    for shown in [
        "--model.pos learned|rope position encoding (preset default: rope)",
        "--model.norm layernorm|rmsnorm normalisation layer (preset default: rmsnorm)",
        "--model.mlp gelu|gelu_tanh|swiglu|relu2 MLP type (gelu_tanh: GPT-2's tanh approximation of GELU) (preset default: relu2)",
        "--model.block-size INT context length in tokens (>= 1; preset default: 128)",
        "first (> 0; preset default: 0.003)",
        "--train.max-steps INT|none stop after this many optimizer steps (>= 1; preset default: 600)",
        "schedule name (constant, cosine, wsd, linear, inv_sqrt) (preset default: wsd)",
    ]:
        assert shown in text, shown
    assert "--model.dropout FLOAT dropout probability (in [0, 1); preset default: 0)" in text
    assert "(default: n_head)" not in text and "default: None" not in text
    assert "key/value heads for grouped-query attention (none: n_head) (>= 1)" in text
    assert "--optim.weight_decay" not in text  # the underscore spelling works but is not listed


def test_help_of_another_preset_shows_its_values(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "train", "--preset", "tiny")
    assert "--model.n-embd INT model width (>= 1; preset tiny: 32)" in text


def test_each_command_lists_only_the_config_sections_it_reads(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, "data", "prepare")
    assert "[data] where the text comes from" in text and "[tokenizer] how text becomes tokens" in text
    assert "--data.redact" in text and "--tokenizer.vocab-size" in text
    assert "--optim." not in text and "--model." not in text and "--train." not in text
    assert "--redact " not in text
    lr = help_text(capsys, "lr-find")
    assert "--model.n-embd" in lr and "--eval." not in lr and "--guard." not in lr
    assert "--eval.every" not in help_text(capsys, "sample") and "--model." not in help_text(capsys, "plot")
    code, _, err = cli(capsys, "data", "prepare", "--optim.lr", "1e-3")
    assert code == 2 and "steplab data prepare does not use the optim settings (--optim.lr;" in err


def test_every_flag_has_help() -> None:
    import dataclasses

    from steplab.config import SECTIONS

    for c in COMMANDS:
        for f in dataclasses.fields(c.options):
            assert f.metadata.get("help") or f.metadata.get("cli") is False, f"{c.name}: {f.name}"
    for cls in SECTIONS.values():
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls))


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from steplab import __version__

    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.startswith(f"steplab {__version__} (torch ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--optim.lrr", "3"], "unknown flag --optim.lrr (did you mean --optim.lr?"),
        (["train", "--train.max-step=5"], "unknown flag --train.max-step (did you mean --train.max-steps?"),
        (["sample", "r", "--max-new-token", "5"], "did you mean --max-new-tokens?"),
        (["trian"], "unknown command 'trian' (did you mean train?"),
        (["compar"], "did you mean compare?"),
        (["data", "prepar"], "unknown command 'prepar' (did you mean prepare?"),
        (["data", "prepare", "--redact"], "--redact is now --data.redact"),
    ],
)
def test_did_you_mean(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_did_you_mean_in_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "c.toml").write_text("[optim]\nlrr = 1e-3\n[trian]\nseed = 1\n")
    code, _, err = cli(capsys, "train", "--config", str(tmp_path / "c.toml"), "--print-config")
    assert code == 2 and "optim.lrr (did you mean optim.lr?" in err
    (tmp_path / "c.toml").write_text("[trian]\nseed = 1\n")
    code, _, err = cli(capsys, "train", "--config", str(tmp_path / "c.toml"), "--print-config")
    assert code == 2 and "unknown section [trian] (did you mean [train]?" in err


def test_literal_choices_match_the_libraries() -> None:
    import typing

    from steplab.cli.export import FORMATS
    from steplab.cli.plot import X_AXES
    from steplab.cli.runs import SORTS
    from steplab.cli.tuning import LrFindOptions
    from steplab.reports.plots import X_LABELS
    from steplab.reports.runs import SORT_KEYS
    from steplab.tools import export, lr_find

    assert set(typing.get_args(X_AXES)) == set(X_LABELS)
    assert set(typing.get_args(SORTS)) == set(SORT_KEYS)
    assert set(typing.get_args(FORMATS)) == set(export.FORMATS)
    assert set(typing.get_args(typing.get_type_hints(LrFindOptions)["rule"])) == set(lr_find.RULES)


def test_help_and_parsing_import_no_torch() -> None:
    """`steplab --help` and every command's parser are built without importing torch."""
    import subprocess
    import sys

    code = """
import contextlib, io, sys
from steplab.cli.main import COMMANDS, main
for c in COMMANDS:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main([*c.name.split(), "--help"])
        except SystemExit as e:
            assert e.code == 0, c.name
print(sorted({"torch", "matplotlib", "optuna"} & {m.split(".")[0] for m in sys.modules}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
