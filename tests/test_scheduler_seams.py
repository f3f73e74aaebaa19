"""The scheduler's modules import one another without a circle and use no other module's privates."""

from __future__ import annotations

import ast
from pathlib import Path

SCHEDULER = Path(__file__).resolve().parent.parent / "easytask" / "scheduler"


def parsed() -> dict[str, ast.Module]:
    return {p.stem: ast.parse(p.read_text(), filename=str(p)) for p in SCHEDULER.glob("*.py")}


def scheduler_imports(tree: ast.Module, names: set[str]) -> set[str]:
    """The scheduler modules a module imports, function-level and TYPE_CHECKING imports too."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "easytask.scheduler":
                found.update(a.name for a in node.names if a.name in names)
            elif node.module.startswith("easytask.scheduler."):
                found.add(node.module.rsplit(".", 1)[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("easytask.scheduler."):
                    found.add(alias.name.rsplit(".", 1)[1])
    return found & names


def test_no_import_circles() -> None:
    """Every import among the scheduler's modules points one way."""
    trees = parsed()
    graph = {name: scheduler_imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        assert name not in path, "import circle: " + " -> ".join([*path, name])
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_no_private_names_across_modules() -> None:
    """No module imports a private name, or reaches one of another object but its own."""
    for name, tree in parsed().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    private = alias.name.startswith("_") and not alias.name.startswith("__")
                    assert not private, f"{name} imports {alias.name}"
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name)
                and node.value.id not in ("self", "cls")
            ):
                raise AssertionError(f"{name}:{node.lineno} uses {node.value.id}.{node.attr}")
