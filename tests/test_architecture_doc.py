"""docs/architecture.md stays true: every function it names exists, every package is on its map."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOC = (REPO / "docs" / "architecture.md").read_text()
# `scheduler/engine.py:JobEngine.submit`, `plan/adhoc.py:plan_adhoc`, `cli/jobs.py:cmd_run`
NAMED = sorted(set(re.findall(r"`([a-z_/]+\.py):([A-Za-z_][\w.]*)`", DOC)))


def test_the_path_names_functions() -> None:
    """The walk through one ad hoc command names real functions (a parse that finds none fails)."""
    assert len(NAMED) >= 20


@pytest.mark.parametrize(("path", "name"), NAMED)
def test_named_function_exists(path: str, name: str) -> None:
    """Each `module.py:name` of the walk-through is a real attribute of that module."""
    module = importlib.import_module("easytask." + path.removesuffix(".py").replace("/", "."))
    target: object = module
    for part in name.split("."):
        assert hasattr(target, part), f"{path}:{name}: no {part!r}"
        target = getattr(target, part)


def test_every_package_is_on_the_map() -> None:
    """Every subpackage of easytask/ has a row in the packages table."""
    packages = sorted(p.name for p in (REPO / "easytask").iterdir() if (p / "__init__.py").exists())
    missing = [name for name in packages if f"`{name}/`" not in DOC and name != "migrations"]
    assert not missing, f"docs/architecture.md does not place {missing}"
