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
    "names",
    "facts",
    "vault",
    "grouping",
    "hostsample",
    "headroom",
    "jobtemplate",
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


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_only_the_core(module: str) -> None:
    """The pure core builds on nothing but itself: no transport, store, scheduler or door."""
    core = tuple(f"easytask.{name}" for name in PURE)
    for path in module_files(module):
        ours = {n for n in imports_of(path) if n.startswith("easytask.")}
        bad = {n for n in ours if not n.startswith(core)}
        assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


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
                "easytask.service",
                "easytask.web",
                "easytask.cli",
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


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _all_modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _edges(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The easytask modules a module imports, anywhere in it (function level too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                for alias in node.names
            ]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def test_no_import_circles() -> None:
    """No two modules of the package import each other, directly or round a circle."""
    modules = _all_modules()
    graph = {name: _edges(name, path, modules) for name, path in modules.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not circles, f"import circles: {circles}"


def test_web_never_imports_server() -> None:
    """The web layer gets what it needs passed in; it never imports the process that wires it."""
    for path in module_files("web"):
        bad = {n for n in imports_of(path) if n.startswith("easytask.server")}
        assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"


MAX_LINES = 600


def test_modules_stay_small() -> None:
    """No module of the package is over the size ceiling: a bigger one holds two concepts."""
    big = {
        str(p.relative_to(PKG)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"


# Underscore names that are not another module's privates: SQLAlchemy's public `Row._mapping`,
# an instance's own attribute set in its `__new__`, asyncssh's logging that sshlog.py patches.
NOT_PRIVATE = {
    ("store/runs.py", "_mapping"),
    ("plan/check.py", "_path"),
    ("plan/check.py", "_kind"),
    ("transport/sshlog.py", "_log_packet"),
    ("transport/sshlog.py", "_debug_level"),
    ("transport/sshlog.py", "_easytask_checks_level"),
}


def test_no_private_names_across_modules() -> None:
    """A name with a leading underscore is used only where it is defined: no module imports
    one, or reaches one through another module or object (only `self`/`cls` may)."""
    offenders = []
    for path in PKG.rglob("*.py"):
        where = path.relative_to(PKG)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (
                node.level or "easytask" in (node.module or "")
            ):
                offenders += [
                    f"{where}: imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls")
                and (str(where), node.attr) not in NOT_PRIVATE
            ):
                offenders.append(f"{where}:{node.lineno}: uses {node.value.id}.{node.attr}")
    assert not offenders, offenders
