"""The `vaekit` command line: sub-commands that parse flags and call the library."""

from vaekit.cli.main import main

__all__ = ["main"]
