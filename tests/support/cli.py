"""The CLI run in-process, its API client replaced by a stand-in that answers what a test needs."""

from __future__ import annotations

import io
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from easytask.cli import main


def answer_with(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, module: ModuleType, fake: Any
) -> Any:
    """Make the commands of `module` talk to `fake`, with an empty config file."""
    monkeypatch.setattr(module, "api_client", lambda settings: fake)
    (tmp_path / "none.toml").write_text("")
    monkeypatch.setenv("EASYTASK_CONFIG", str(tmp_path / "none.toml"))
    return fake


def run_cli(*argv: str) -> tuple[int, str]:
    """The exit code and the standard output of one command line."""
    out = io.StringIO()
    return main(list(argv), out), out.getvalue()
