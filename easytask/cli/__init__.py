"""The `easytask` command line: one module per command group; `main` is the entry point."""

from easytask.cli.main import main

__all__ = ["main"]
