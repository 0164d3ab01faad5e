"""Hyperparameter search on Optuna: `steplab tune`.

A trial is `steplab.loop.fit.train` with values drawn from the search space set on the base
config, a pruning callback that reports each evaluation's validation loss, and its own run
directory under the study directory. The package is split by concept:

- `space`: the search space (a small TOML file, one table per config field) and the values a
  trial draws from it (`suggest_params`);
- `objective`: one trial; a diverged trial is pruned as diverged, never a completed result;
- `storage`: journal file (default; a torn last record is repaired), ``sqlite:///``,
  ``postgresql://`` or any SQLAlchemy URL (a missing driver is named);
- `workers`: worker identity and liveness, retrying dead workers' trials, when to stop;
- `study`: opening the study and running it in one or many local processes;
- `watch`: the bar over the trials and one line per finished trial;
- `outputs`: the best-trials table, ``best.toml``, ``trials.json`` and plots.
"""

from steplab.tools.tune.objective import Objective, ReportToTrial, Surplus, diverged
from steplab.tools.tune.outputs import best_table, best_trials, counts, table, write_outputs
from steplab.tools.tune.space import KINDS, Param, apply, load_space, parse_space, suggest_params
from steplab.tools.tune.storage import open_storage, postgres_url, repair_journal
from steplab.tools.tune.study import PRUNERS, SAMPLERS, TuneSpec, open_study, run_study, run_worker
from steplab.tools.tune.workers import Stopper, Tally, recover_dead_trials, tally, worker_alive, worker_id

__all__ = [
    "KINDS",
    "PRUNERS",
    "SAMPLERS",
    "Objective",
    "Param",
    "ReportToTrial",
    "Stopper",
    "Surplus",
    "Tally",
    "TuneSpec",
    "apply",
    "best_table",
    "best_trials",
    "counts",
    "diverged",
    "load_space",
    "open_storage",
    "open_study",
    "parse_space",
    "postgres_url",
    "recover_dead_trials",
    "repair_journal",
    "run_study",
    "run_worker",
    "suggest_params",
    "table",
    "tally",
    "worker_alive",
    "worker_id",
    "write_outputs",
]
