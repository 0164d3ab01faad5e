"""What a study leaves behind: the best trials as a table, ``best.toml`` (base config plus
the best values: `steplab train --config` takes it), ``trials.json`` and Optuna's plots."""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path
from typing import Any

from steplab.atomic import replacing, write_file
from steplab.config import dump_toml
from steplab.tools.tune.space import apply, optuna_module
from steplab.tools.tune.study import TuneSpec


def best_trials(study: Any, k: int = 5) -> list[Any]:
    S = optuna_module().trial.TrialState
    done = [t for t in study.get_trials(deepcopy=False, states=(S.COMPLETE,)) if t.value is not None]
    return sorted(done, key=lambda t: t.value)[:k]


def counts(study: Any) -> str:
    """``study NAME: 18 complete, 2 pruned, 1 fail``."""
    S = optuna_module().trial.TrialState
    trials = study.get_trials(deepcopy=False)
    n = {s.name.lower(): sum(t.state == s for t in trials) for s in (S.COMPLETE, S.PRUNED, S.FAIL, S.RUNNING)}
    return f"study {study.study_name}: " + ", ".join(f"{v} {name}" for name, v in n.items() if v)


def best_table(study: Any, k: int = 5) -> tuple[list[str], list[list[str]]]:
    """The best `k` complete trials: headers and rows of text (`steplab.reports.document.Table`
    shows them as a rich table on a terminal, Markdown in a pipe)."""
    rows = best_trials(study, k)
    keys = sorted({key for t in rows for key in t.params})
    head = ["trial", "val_loss", *keys]
    body = [[str(t.number), f"{t.value:.4f}", *(_fmt(t.params.get(key)) for key in keys)] for t in rows]
    return head, body


def table(study: Any, k: int = 5) -> str:
    """The best `k` trials as a plain-text table, with the study's counts."""
    head, body = best_table(study, k)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [head, *body]]
    return "\n".join([counts(study), *lines])


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def write_outputs(study: Any, spec: TuneSpec) -> dict[str, Path]:
    """best.toml (base + best values: `steplab train --config` takes it), trials.json, plots."""
    from steplab.config import from_dict

    out_dir = Path(spec.study_dir)
    written: dict[str, Path] = {}
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": t.params,
            "user_attrs": t.user_attrs,
            "intermediate": {str(k): v for k, v in t.intermediate_values.items()},
        }
        for t in study.get_trials(deepcopy=False)
    ]
    written["trials"] = out_dir / "trials.json"
    write_file(written["trials"], json.dumps(rows, indent=1, default=str))
    best = best_trials(study, 1)
    if not best:
        return written
    cfg = apply(from_dict(tomllib.loads(spec.base_toml)), best[0].params)
    written["best"] = out_dir / "best.toml"
    write_file(
        written["best"],
        f"# steplab tune: best of study {study.study_name!r}, trial {best[0].number}, "
        f"val_loss {best[0].value:.4f}\n" + dump_toml(cfg),
    )
    written.update(_plots(study, out_dir))
    return written


def _plots(study: Any, out_dir: Path) -> dict[str, Path]:
    optuna = optuna_module()
    from steplab.figures import pyplot

    plt = pyplot()
    out: dict[str, Path] = {}
    vis = optuna.visualization.matplotlib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both plots are marked experimental
        for name, fn in (
            ("history", vis.plot_optimization_history),
            ("importances", vis.plot_param_importances),
        ):
            try:
                ax = fn(study)
            except (ValueError, RuntimeError) as e:  # e.g. importances need two complete trials
                warnings.warn(f"no {name} plot: {e}", stacklevel=2)
                continue
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            path = out_dir / f"{name}.png"
            fig.tight_layout()
            with replacing(path) as tmp:
                fig.savefig(tmp, dpi=110)
            plt.close(fig)
            out[name] = path
    return out
