"""docs/cli.md is the parser's own help."""

from __future__ import annotations

from easytask.clidoc import render
from tests.helpers import REPO


def test_cli_reference_is_current() -> None:
    """The committed CLI reference equals what the parser prints (regenerate with clidoc)."""
    assert (REPO / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `.venv/bin/python -m easytask.clidoc > docs/cli.md`"
    )
