"""`steplab compare`: which optimizer, which architecture, measured on your data and budget.

Every variant (the cartesian product of the ``--vary`` settings, plus any named
``--variant``) is trained once per seed on the same data, seeds and budget. Each run is a
normal run directory under the compare directory, trained by `steplab.loop.fit.train`, so it
can be sampled, evaluated or resumed like any other. Running the same command again skips
finished runs and resumes interrupted ones from their newest checkpoint.

The package is split by concept: `plan` (variants, learning rates, budgets, configs), `run`
(training what is not done yet, with one progress bar over every run), `results` (each run
read back from its directory; variants ranked over seeds with a Welch t-test against the
best). The report (``compare.md``, ``results.json``, loss plots) is
`steplab.reports.compare`, built from the same pieces as `steplab report`.
"""

from steplab.tools.compare.plan import (
    Budget,
    Plan,
    Variant,
    default_out,
    eval_every,
    make_plan,
    parse_variant,
    parse_vary,
    plan_variants,
    variant_config,
)
from steplab.tools.compare.results import ALPHA, Row, RunResult, aggregate, peak_memory, read_run
from steplab.tools.compare.run import DONE, Comparison, check_same_config, compare, run_state

__all__ = [
    "ALPHA",
    "DONE",
    "Budget",
    "Comparison",
    "Plan",
    "Row",
    "RunResult",
    "Variant",
    "aggregate",
    "check_same_config",
    "compare",
    "default_out",
    "eval_every",
    "make_plan",
    "parse_variant",
    "parse_vary",
    "peak_memory",
    "plan_variants",
    "read_run",
    "run_state",
    "variant_config",
]
