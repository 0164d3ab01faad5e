"""The typed config tree (`schema`) and its files (`files`): import everything from here.

`schema` holds the sections, `RunConfig`, and the coercion and range checks that name the
flag the user typed; `files` turns a config into a dict or TOML and back.
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
    check_value,
    coerce,
    describe,
    field_type,
    flag,
    opt,
    set_value,
)

__all__ = [
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
    "coerce",
    "describe",
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
