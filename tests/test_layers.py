"""The import order of the package: pure core <- transport, store <- scheduler <- service <- web, cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "easytask"

PURE = [
    "errors",
    "config",
    "inventory",
    "sourceyaml",
    "cron",
    "plan",
    "playbook",
    "durations",
    "loglines",
    "templating",
    "masking",
]
IO_LIBS = {
    "asyncssh",
    "sqlmodel",
    "sqlalchemy",
    "starlette",
    "uvicorn",
    "httpx",
    "socket",
    "subprocess",
    "asyncio",
}


def imports_of(path: Path) -> set[str]:
    """Every module a file imports (absolute names)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_files(prefix: str) -> list[Path]:
    target = PKG / prefix
    if target.is_dir():
        return sorted(target.rglob("*.py"))
    file = PKG / f"{prefix}.py"
    return [file] if file.exists() else []


@pytest.mark.parametrize("module", PURE)
def test_pure_core_has_no_io_imports(module: str) -> None:
    """The pure core imports no SSH, database, web or process libraries."""
    for path in module_files(module):
        bad = {n for n in imports_of(path) if n.split(".")[0] in IO_LIBS}
        assert not bad, f"{path.name} imports {sorted(bad)}"


@pytest.mark.parametrize(
    ("layer", "forbidden"),
    [
        (
            "transport",
            (
                "easytask.store",
                "easytask.scheduler",
                "easytask.web",
                "easytask.cli",
                "easytask.server",
            ),
        ),
        (
            "store",
            (
                "easytask.transport",
                "easytask.scheduler",
                "easytask.web",
                "easytask.cli",
                "easytask.server",
            ),
        ),
        (
            "scheduler",
            ("easytask.service", "easytask.web", "easytask.cli", "easytask.server"),
        ),
        ("service", ("easytask.web", "easytask.cli", "easytask.server")),
        ("web", ("easytask.cli", "easytask.server")),
        (
            "agent",
            (
                "easytask.store",
                "easytask.scheduler",
                "easytask.web",
                "easytask.server",
                "sqlmodel",
                "sqlalchemy",
                "starlette",
                "uvicorn",
            ),
        ),
    ],
)
def test_layers_import_one_way(layer: str, forbidden: tuple[str, ...]) -> None:
    """Lower layers never import higher ones; the agent imports no store or web code."""
    files = module_files(layer)
    assert files, f"no module files for {layer}"
    for path in files:
        bad = {n for n in imports_of(path) if n.startswith(forbidden)}
        assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"
