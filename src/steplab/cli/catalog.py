"""`steplab presets` and `steplab optimizers`: what there is to choose from."""

from __future__ import annotations

from dataclasses import dataclass

from steplab.cli.options import Command


@dataclass(kw_only=True)
class PresetsOptions:
    """List the presets (start a run from one with --preset NAME)."""


@dataclass(kw_only=True)
class OptimizersOptions:
    """List the registered optimizers and their default learning rates."""


def cmd_presets(opts: PresetsOptions) -> int:
    from steplab.presets import PRESETS

    for name, fn in PRESETS.items():
        print(f"{name:18s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    return 0


def cmd_optimizers(opts: OptimizersOptions) -> int:
    from steplab.optim import DEFAULT_LR, OPTIMIZERS

    for name in OPTIMIZERS:
        print(f"{name:20s} default lr {DEFAULT_LR.get(name, 1e-3):g}")
    return 0


PRESETS = Command("presets", PresetsOptions, cmd_presets)
OPTIMIZERS = Command("optimizers", OptimizersOptions, cmd_optimizers)
