"""The `steplab` command line.

Config flags are generated from the dataclasses in `steplab.config`: every field of every
section is a flag ``--section.field-name`` (``--optim.lr 3e-3``, ``--train.max-seconds 60``),
and ``--data PATH``, ``--tokenizer KIND``, ``--optim NAME``, ``--schedule NAME`` are short
for the section's main field. Settings apply in the order preset → ``--config FILE`` →
flags. A user mistake prints one line and exits with code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from steplab.config import (
    SECTIONS,
    SHORTHANDS,
    RunConfig,
    describe,
    dump_toml,
    field_type,
    load_toml,
    set_value,
)
from steplab.errors import SteplabError

CFG_PREFIX = "cfg:"


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag as one line (no usage dump) with exit code 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per config field, generated from the dataclasses (their help is the field's doc)."""
    p.add_argument(
        "--preset", default=None, help="start from a preset (see `steplab presets`; default: default)"
    )
    p.add_argument(
        "--config", default=None, metavar="FILE", help="a TOML config file (a serialized RunConfig)"
    )
    for section, cls in SECTIONS.items():
        g = p.add_argument_group(
            f"{section} ({cls.__doc__.splitlines()[0].rstrip('.') if cls.__doc__ else ''})"
        )
        if section in SHORTHANDS:
            main = SHORTHANDS[section]
            g.add_argument(
                f"--{section}",
                dest=f"{CFG_PREFIX}{section}.{main}",
                default=argparse.SUPPRESS,
                metavar="VALUE",
                help=f"short for --{section}.{main.replace('_', '-')}",
            )
        for f in dataclasses.fields(cls):
            tp = field_type(cls, f.name)
            names = [f"--{section}.{f.name.replace('_', '-')}"]
            if "_" in f.name:
                names.append(f"--{section}.{f.name}")
            kwargs: dict[str, Any] = {}
            if tp is bool:
                kwargs.update(nargs="?", const="true", metavar="BOOL")
            else:
                kwargs["metavar"] = describe(tp).upper().replace(" OR ", "|")
            default = f.default if f.default is not dataclasses.MISSING else None
            g.add_argument(
                *names,
                dest=f"{CFG_PREFIX}{section}.{f.name}",
                default=argparse.SUPPRESS,
                help=f"{f.metadata.get('help', '')} (default: {default})",
                **kwargs,
            )


def config_from_args(args: argparse.Namespace, base: RunConfig | None = None) -> RunConfig:
    """preset (or `base`, unless a preset is named) → config file → flags; then validate."""
    from steplab.presets import get_preset

    cfg = base if (base is not None and not args.preset) else get_preset(args.preset or "default")
    if args.config:
        cfg = load_toml(args.config, base=cfg)
        if args.preset:
            cfg.preset = args.preset
    for key, value in vars(args).items():
        if key.startswith(CFG_PREFIX):
            section, name = key[len(CFG_PREFIX) :].split(".", 1)
            set_value(cfg, f"{section}.{name}", value, where=f"--{section}.{name.replace('_', '-')}")
    from steplab.loop.session import check

    return check(cfg)


# --- commands -----------------------------------------------------------------------------


def _strip_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == flag:
            skip = True
        elif not a.startswith(flag + "="):
            out.append(a)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from steplab.loop.fit import train

    named = Path(args.run_dir) if args.run_dir else (Path("runs") / args.name if args.name else None)
    if args.resume and named is None:
        raise SteplabError("--resume needs the run to continue: pass --run-dir DIR (or --name NAME)")
    base = None
    if args.resume and named is not None and (named / "config.toml").is_file():
        base = load_toml(named / "config.toml")  # a resumed run keeps its settings; flags still override
    cfg = config_from_args(args, base)
    if args.print_config:
        print(dump_toml(cfg), end="")
        return 0
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        from steplab.dist import launch

        return launch(args.nproc, _strip_flag(args.argv, "--nproc"))
    run_dir = named or Path("runs") / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.quiet:  # also silences data preparation, which reads the config
        cfg.train.progress = False
    if isinstance(cfg.optim.lr, str):
        from steplab.tools.lr_find import resolve_auto_lr

        resolve_auto_lr(cfg, quiet=args.quiet)
    result = train(
        cfg,
        run_dir,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=cfg.train.progress and not args.quiet,
    )
    f = result.final
    summary = (
        f"{result.status}: {result.state.step} steps, {result.state.tokens:,} tokens, "
        f"{result.state.train_seconds:.1f} s training"
    )
    if "val_loss" in f:
        summary += f"; val_loss {f['val_loss']:.4f}, ppl {f['val_ppl']:.2f}, bpb {f['val_bpb']:.4f}"
    print(summary)
    print(f"run: {run_dir}   next: steplab sample --run {run_dir}   steplab eval --run {run_dir}")
    return 0 if result.status in ("finished", "target", "interrupted", "stopped") else 1


def load_run_model(run: str, which: str, device_name: str):  # noqa: ANN201 - returns (model, tokenizer, loaded)
    import torch

    from steplab import checkpoint as ckpt
    from steplab.model import GPT
    from steplab.runtime import resolve_device

    run_dir = Path(run)
    if not run_dir.exists():
        raise SteplabError(f"--run: {run_dir} does not exist")
    path = ckpt.latest(run_dir, which=which)
    loaded = ckpt.load(path, with_optimizer=False)
    device = resolve_device(device_name)
    torch.manual_seed(0)
    model = GPT(loaded.cfg.model)
    ckpt.load_weights(model, loaded.weights, path)
    model.to(device).eval()
    return model, loaded.tokenizer, loaded


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from steplab.data.tokenizer import StreamDecoder
    from steplab.generate import generate

    if args.max_new_tokens < 0:
        raise SteplabError(f"--max-new-tokens must be >= 0 (got {args.max_new_tokens})")
    if args.temperature < 0:
        raise SteplabError(f"--temperature must be >= 0 (got {args.temperature})")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise SteplabError(f"--top-p must be in (0, 1] (got {args.top_p})")
    model, tok, _ = load_run_model(args.run, args.checkpoint, args.device)
    prompt = args.prompt if args.prompt else "\n"
    ids = tok.encode(prompt)
    if not ids:
        raise SteplabError("--prompt encodes to no tokens")
    out = sys.stdout
    out.write(prompt if args.prompt else "")
    dec = StreamDecoder(tok)
    for t in generate(
        model,
        torch.tensor(ids),
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    ):
        out.write(dec.push(t))
        out.flush()
    out.write("\n")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from steplab.data.batches import val_windows
    from steplab.data.cache import prepare
    from steplab.evaluate import mean_loss, summarize
    from steplab.runtime import autocast, autocast_dtype

    model, tok, loaded = load_run_model(args.run, args.checkpoint, args.device)
    cfg = loaded.cfg
    if args.data:
        cfg.data.path = args.data
    data = prepare(cfg.data, cfg.tokenizer)
    if data.tokenizer.to_json() != tok.to_json():
        raise SteplabError(
            f"the corpus tokenizes differently from the checkpoint's tokenizer ({loaded.path}); "
            "evaluate on the run's own --data"
        )
    window = cfg.eval.window or cfg.model.block_size
    x, y = val_windows(data.val, window, args.max_windows or cfg.eval.max_windows, cfg.train.seed)
    device = next(model.parameters()).device
    loss = mean_loss(
        model,
        x,
        y,
        batch_size=cfg.eval.batch_size,
        device=device,
        amp=autocast(device, autocast_dtype(cfg.train, device)),
    )
    res = {
        "checkpoint": str(loaded.path),
        "step": loaded.state.step,
        "windows": len(x),
        **summarize(loss, data.bytes_per_token),
    }
    if args.json:
        print(json.dumps(res))
    else:
        print(
            f"{loaded.path}: step {res['step']}, {res['windows']} windows: val_loss {res['val_loss']:.4f}  "
            f"ppl {res['val_ppl']:.2f}  bits/byte {res['val_bpb']:.4f}"
        )
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from steplab.presets import PRESETS

    for name, fn in PRESETS.items():
        print(f"{name:18s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return 0


def cmd_optimizers(args: argparse.Namespace) -> int:
    from steplab.optim import DEFAULT_LR, OPTIMIZERS

    for name in OPTIMIZERS:
        print(f"{name:20s} default lr {DEFAULT_LR.get(name, 1e-3):g}")
    return 0


# --- the parser ---------------------------------------------------------------------------


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--checkpoint", choices=["latest", "best"], default="latest", help="which checkpoint")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")


Command = Callable[[argparse.Namespace], int]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Command]]:
    parser = Parser(prog="steplab", description="Train, tune, compare and guard GPT-style language models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    commands: dict[str, Command] = {}

    p = sub.add_parser("train", help="train a model (default: the bundled Tiny Shakespeare)")
    add_config_flags(p)
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/NAME)")
    p.add_argument("--name", default=None, help="run name under runs/ (default: PRESET-TIMESTAMP)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        choices=["auto"],
        help="continue from the newest valid checkpoint of --run-dir",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    p.add_argument(
        "--nproc", type=int, default=1, help="processes on this machine: launches torchrun (DDP/FSDP2)"
    )
    commands["train"] = cmd_train

    p = sub.add_parser("sample", help="generate text from a trained run")
    add_run_flags(p)
    p.add_argument("--prompt", default="", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=300)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for reproducible samples")
    commands["sample"] = cmd_sample

    p = sub.add_parser("eval", help="validation loss, perplexity and bits per byte of a run")
    add_run_flags(p)
    p.add_argument("--data", default=None, help="evaluate on another corpus (same tokenizer)")
    p.add_argument("--max-windows", type=int, default=None, help="a seeded subset of windows")
    p.add_argument("--json", action="store_true", help="print JSON")
    commands["eval"] = cmd_eval

    p = sub.add_parser("presets", help="list the presets")
    commands["presets"] = cmd_presets
    p = sub.add_parser("optimizers", help="list the optimizers")
    commands["optimizers"] = cmd_optimizers

    import importlib

    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register_cli(sub, commands)
    return parser, commands


# Modules that add their own commands (compare, tune, report, ...): each has
# `register_cli(subparsers, commands)`. Imported only when the CLI runs.
COMMAND_MODULES: list[str] = [
    "steplab.cli.runs",
    "steplab.cli.plot",
    "steplab.cli.report",
    "steplab.cli.export",
    "steplab.cli.doctor",
    "steplab.cli.data",
    "steplab.cli.tools",
    "steplab.cli.compare",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not args.command:
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return commands[args.command](args)
    except SteplabError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:  # `steplab runs | head`: the reader left, nothing is wrong
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _one_line_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings (a damaged checkpoint skipped, a setting ignored) as one `warning:` line."""
    sys.stderr.write(f"warning: {message}\n")


if __name__ == "__main__":
    raise SystemExit(main())
