"""Ansible's INI inventory format: `[group]`, `[group:vars]`, `[group:children]` sections."""

from __future__ import annotations

import ast
import re
import shlex
import warnings
from dataclasses import dataclass, field
from typing import Any

from easytask.errors import InventoryError, SourceLocation
from easytask.inventory.hostnames import RangeError, expand_host_pattern
from easytask.inventory.model import InventoryData

__all__ = ["ini_value", "parse_ini"]

_SECTION = re.compile(r"\[([^:\]\s]+)(?::(\w+))?\]\s*(?:#.*)?")
_GROUP_NAME = re.compile(r"([^:\]\s]+)\s*(?:#.*)?")
_STATES = ("hosts", "children", "vars")


@dataclass
class _Pending:
    """A group named by `[x:vars]` or under `[y:children]` before any `[x]` section declared it."""

    state: str
    line: int
    parents: list[str] = field(default_factory=list)


def ini_value(text: str) -> Any:
    """Type a value as Ansible does: a Python literal if it is one, else the text itself."""
    try:
        with warnings.catch_warnings():
            # Escapes such as "\d" warn while compiling; Ansible ignores that.
            warnings.simplefilter("ignore")
            value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    except (TypeError, MemoryError, RecursionError) as exc:
        raise InventoryError(f"cannot read value {text!r}: {exc}") from None
    return _plain(value)


def _plain(value: Any) -> Any:
    """Turn what literal_eval gives into plain variable types, as Ansible does."""
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if value is Ellipsis:
        return "..."
    if isinstance(value, complex):
        return str(value)
    return value


def parse_ini(text: str, path: str, data: InventoryData) -> None:
    """Add the hosts, groups and variables of one INI inventory file to `data`."""
    pending: dict[str, _Pending] = {}
    group, state = "ungrouped", "hosts"
    lineno = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        at = SourceLocation(path, lineno)
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = _SECTION.fullmatch(line)
        if m:
            group, state = m.group(1), m.group(2) or "hosts"
            if state not in _STATES:
                raise InventoryError(
                    f"unknown section type {state!r} in [{group}:{state}]"
                    " (expected [group], [group:vars] or [group:children])",
                    location=at,
                )
            if group not in data.groups:
                # [x:vars] alone does not declare x; remember it and check at the end.
                if state == "vars" and group not in pending:
                    pending[group] = _Pending("vars", lineno)
                data.add_group(group, at)
            if group in pending and state != "vars":
                if pending[group].state == "children":
                    _add_pending_children(group, pending, data, at)
                else:
                    del pending[group]
            continue
        if line.startswith("[") and line.endswith("]"):
            raise InventoryError(
                f"invalid section header {line!r}: a group name cannot contain spaces, ':' or ']'",
                location=at,
            )
        if state == "hosts":
            _host_line(line, group, data, at)
        elif state == "vars":
            if "=" not in line:
                raise InventoryError(f"expected key=value, got {line!r}", location=at)
            key, value = (part.strip() for part in line.split("=", 1))
            data.set_variable(group, key, _value(value, at), at)
        else:
            m = _GROUP_NAME.fullmatch(line)
            if not m:
                raise InventoryError(f"expected a group name, got {line!r}", location=at)
            child = m.group(1)
            if child in data.groups:
                data.add_child(group, child, at)
            elif child in pending:
                pending[child].parents.append(group)
            else:
                pending[child] = _Pending("children", lineno, [group])
    for name, decl in pending.items():
        at = SourceLocation(path, decl.line)
        if decl.state == "vars":
            raise InventoryError(
                f"section [{name}:vars] is for undefined group {name!r}"
                f" (declare it with [{name}] or [{name}:children])",
                location=at,
            )
        raise InventoryError(
            f"section [{decl.parents[-1]}:children] includes undefined group {name!r}",
            location=at,
        )


def _add_pending_children(
    group: str, pending: dict[str, _Pending], data: InventoryData, at: SourceLocation
) -> None:
    for parent in pending[group].parents:
        data.add_child(parent, group, at)
        if parent in pending and pending[parent].state == "children":
            _add_pending_children(parent, pending, data, at)
    del pending[group]


def _value(text: str, at: SourceLocation) -> Any:
    try:
        return ini_value(text)
    except InventoryError as exc:
        raise InventoryError(exc.message, location=at) from None


def _host_line(line: str, group: str, data: InventoryData, at: SourceLocation) -> None:
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:
        raise InventoryError(f"cannot parse host line: {exc}", location=at) from None
    if not tokens:
        raise InventoryError(f"expected a host name, got {line!r}", location=at)
    pattern = tokens[0]
    try:
        names, port = expand_host_pattern(pattern)
    except RangeError as exc:
        raise InventoryError(str(exc), location=at) from None
    if pattern.strip().endswith(":") and port is None:
        raise InventoryError(
            f"invalid host {pattern!r}: a trailing ':' must be followed by a port", location=at
        )
    if any(name.strip() == "---" for name in names):
        raise InventoryError(
            f"invalid host {pattern!r}: '---' starts a YAML document, not an INI host", location=at
        )
    variables: dict[str, Any] = {}
    for token in tokens[1:]:
        if "=" not in token:
            raise InventoryError(
                f"expected key=value after the host name, got {token!r}", location=at
            )
        key, value = token.split("=", 1)
        variables[key] = _value(value, at)
    for name in names:
        data.add_host(name, group, port, at)
        for key, value in variables.items():
            data.set_variable(name, key, value, at)
