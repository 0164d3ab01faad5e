"""Error types for user mistakes.

Everything a user can get wrong (a flag, a path, a corpus, a checkpoint) and every fault of
the machine a user can fix (a full disk, a read-only directory) raises a `SteplabError`; the
CLI prints it as one line and exits with code 2. Internal invariants use `assert`.
"""

from __future__ import annotations


class SteplabError(ValueError):
    """A user-facing error: what is wrong, where, and what to do."""


class ConfigError(SteplabError):
    """A bad config value, key or flag."""


class DataError(SteplabError):
    """A corpus that cannot be read or tokenized."""


class StorageError(SteplabError):
    """A file or directory that cannot be written or read: a full disk, a read-only file
    system, missing permissions, a path through a regular file."""


class CheckpointError(SteplabError):
    """A checkpoint that is missing, damaged, unsafe or does not match."""


class IgnoredSettingWarning(UserWarning):
    """A setting that has no effect where it was given (e.g. weight decay under torch's Adam)."""
