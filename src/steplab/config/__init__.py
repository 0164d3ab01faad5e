"""The typed config tree (`schema`), its values (`values`) and files (`files`): import everything from here.

`schema` holds the sections and `RunConfig`; `values` the coercion and range checks that name
the flag the user typed; `files` turns a config into a dict or TOML and back.
"""

from steplab.config.files import (
    NONE,
    dump_toml,
    flatten,
    from_dict,
    load_toml,
    to_dict,
    update_from_dict,
)
from steplab.config.schema import (
    BUDGET,
    SECTIONS,
    SHORTHANDS,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    GuardConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    TokenizerConfig,
    TrainConfig,
    clear_budget,
    flag,
    opt,
    set_value,
)
from steplab.config.values import check_value, coerce, describe, did_you_mean, field_type

__all__ = [
    "BUDGET",
    "NONE",
    "SECTIONS",
    "SHORTHANDS",
    "CheckpointConfig",
    "DataConfig",
    "EvalConfig",
    "GuardConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "ScheduleConfig",
    "TokenizerConfig",
    "TrainConfig",
    "check_value",
    "clear_budget",
    "coerce",
    "describe",
    "did_you_mean",
    "dump_toml",
    "field_type",
    "flag",
    "flatten",
    "from_dict",
    "load_toml",
    "opt",
    "set_value",
    "to_dict",
    "update_from_dict",
]
