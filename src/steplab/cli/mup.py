"""Width transfer under muP: `steplab coord-check` and `steplab transfer` (the work is
`steplab.tools.mup`)."""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Literal

from steplab.atomic import write_file
from steplab.cli.options import Command, ConfigOptions
from steplab.cli.tuning import resolve_auto_lr
from steplab.config import RunConfig, dump_toml, load_toml, opt


@dataclass(kw_only=True)
class CoordCheckOptions(ConfigOptions):
    """muP coordinate check: activation scale per layer vs width, SP and muP side by side."""

    widths: list[int] = opt([64, 128, 256, 512], "model widths to compare (space- or comma-separated)", ge=1)
    steps: int = opt(5, "training steps per width", ge=1)
    lr: float | None = opt(None, "learning rate (none: --optim.lr)", gt=0)
    parametrization: Literal["both", "sp", "mup"] = opt("both", "which parametrizations to check")
    out: str | None = opt(
        None, "directory for coord_check.png and .json (none: runs/coord-check/PRESET-TIME)", metavar="DIR"
    )


def cmd_coord_check(opts: CoordCheckOptions, cfg: RunConfig) -> int:
    from steplab.tools.mup import check_widths, coord_check, plot_coord_checks, slopes

    if opts.lr is None:
        resolve_auto_lr(cfg)
    widths = check_widths(opts.widths, cfg.model.n_head)
    kinds = ["sp", "mup"] if opts.parametrization == "both" else [opts.parametrization]
    checks, data = [], None
    for kind in kinds:
        c = coord_check(cfg, widths, parametrization=kind, steps=opts.steps, lr=opts.lr, data=data)
        checks.append(c)
        sl = slopes(c)
        worst = max(sl, key=lambda k: abs(sl[k]))
        print(
            f"{kind:4s} log2(RMS) per doubling of width at step {opts.steps}: "
            + "  ".join(f"{k} {v:+.2f}" for k, v in sl.items())
        )
        print(f"     largest: {worst} {sl[worst]:+.2f} (0 = flat in width)")
    out = (
        Path(opts.out)
        if opts.out
        else Path("runs") / "coord-check" / f"{cfg.preset}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    plot_coord_checks(checks, out / "coord_check.png")
    write_file(
        out / "coord_check.json", json.dumps([{**c.__dict__, "slopes": slopes(c)} for c in checks], indent=1)
    )
    print(f"wrote {out / 'coord_check.png'} and {out / 'coord_check.json'}")
    return 0


@dataclass(kw_only=True)
class TransferOptions:
    """Move a tuned config to another width under muP (--from best.toml --width 512)."""

    source: str = opt(
        MISSING, "a tuned config TOML (e.g. a study's best.toml)", flag="--from", metavar="FILE"
    )
    width: int = opt(MISSING, "the new model width (n_embd)", ge=1)
    out: str | None = opt(None, "output TOML (none: FILE-wWIDTH.toml beside FILE)", metavar="FILE")


def cmd_transfer(opts: TransferOptions) -> int:
    from steplab.tools.mup import group_lrs, scaled_config

    src = Path(opts.source)
    cfg = load_toml(src)
    new = scaled_config(cfg, opts.width)
    out = Path(opts.out) if opts.out else src.with_name(f"{src.stem}-w{opts.width}.toml")
    m = new.model
    print(
        f"{src}: width {cfg.model.n_embd} ({cfg.model.parametrization}) -> {m.n_embd} under muP, "
        f"base width {m.mup_base_width}, {m.n_head} heads of {m.head_dim}"
    )
    before, after = group_lrs(cfg), group_lrs(new)
    for k in after:
        print(f"  {k:7s} lr {before.get(k, float('nan')):.3g} -> {after[k]:.3g}")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, f"# steplab transfer --from {src} --width {opts.width}\n" + dump_toml(new))
    print(f"wrote {out}   next: steplab train --config {out}")
    return 0


COORD_CHECK = Command(
    "coord-check",
    CoordCheckOptions,
    cmd_coord_check,
    sections=("model", "data", "tokenizer", "optim", "train"),
)
TRANSFER = Command("transfer", TransferOptions, cmd_transfer)
