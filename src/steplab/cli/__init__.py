"""The `steplab` command line."""

from steplab.cli.main import main

__all__ = ["main"]
