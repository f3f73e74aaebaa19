"""Inventory scripts: an executable run with `--list` (and `--host NAME`), read as Ansible's script plugin reads it.

Running the program is not done here (the inventory is pure code): the caller passes a
`ScriptRunner`, which returns the script's standard output or raises an InventoryError.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from easytask.errors import InventoryError, SourceLocation
from easytask.inventory.model import InventoryData
from easytask.sourceyaml import UnsafeText

__all__ = ["ScriptRunner", "is_script", "parse_script", "read_script_json"]

# (path, arguments) -> the script's standard output, or None when the system cannot run the file
# as a program (no `#!` line, not a binary: it is then read as an inventory file, as Ansible
# tries its other plugins); raises InventoryError when the script fails.
ScriptRunner = Callable[[str, Sequence[str]], bytes | None]


def is_script(path: Path) -> bool:
    """A file Ansible runs as an inventory script: one the user may execute."""
    return path.is_file() and os.access(path, os.X_OK)


def _object_hook(pairs: dict[str, Any]) -> Any:
    # Ansible's legacy JSON profile: {"__ansible_unsafe": "..."} is a string never templated.
    if len(pairs) == 1 and isinstance(pairs.get("__ansible_unsafe"), str):
        return UnsafeText(pairs["__ansible_unsafe"])
    return pairs


def read_script_json(output: bytes, where: str) -> Any:
    """The JSON a script printed; an error names the command and the line and column."""
    try:
        text = output.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = output[: exc.start].count(b"\n") + 1
        raise InventoryError(
            "the output is not valid UTF-8", location=SourceLocation(where, line)
        ) from None
    try:
        return json.loads(text, object_hook=_object_hook)
    except json.JSONDecodeError as exc:
        raise InventoryError(
            f"the output is not valid JSON: {exc.msg}",
            location=SourceLocation(where, exc.lineno, exc.colno),
        ) from None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names: dict[Any, str] = {dict: "an object", list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def parse_script(path: str, run: ScriptRunner, data: InventoryData) -> bool:
    """Run `path --list` and add its groups, hosts and variables to the inventory.

    As Ansible: a group is {"hosts": [...], "vars": {...}, "children": [...]}, a bare list is
    its hosts, a mapping with none of those keys is a host named after the group with those
    variables; `_meta.hostvars` gives each listed host its variables, and without `_meta`
    the script is run again as `path --host NAME` for every host. False if the file is not a
    program after all (the runner said so): nothing was added.
    """
    where = f"{path} --list"
    listed = run(path, ["--list"])
    if listed is None:
        return False
    doc = read_script_json(listed, where)
    if not isinstance(doc, dict):
        raise InventoryError(f"{where}: the output must be a JSON object, not {_kind(doc)}")
    hostvars: Mapping[str, Any] | None = None
    hosts: dict[str, None] = {}
    for group, body in doc.items():
        if group == "_meta":
            if not isinstance(body, dict):
                raise InventoryError(f"{where}: '_meta' must be an object, not {_kind(body)}")
            hostvars = body.get("hostvars")
            if not isinstance(hostvars, dict):
                raise InventoryError(
                    f"{where}: '_meta.hostvars' must be an object, not {_kind(hostvars)}"
                )
        else:
            hosts.update(dict.fromkeys(_parse_group(where, group, body, data)))
    for host in hosts:
        if hostvars is None:
            at = f"{path} --host {host}"
            output = run(path, ["--host", host]) or b""
            got = read_script_json(output, at) if output.strip() else {}
        else:
            at = f"{where}: '_meta.hostvars.{host}'"
            got = hostvars.get(host, {})
        if not isinstance(got, dict):
            raise InventoryError(f"{at}: host variables must be an object, not {_kind(got)}")
        for key, value in got.items():
            data.set_variable(host, key, value)
    return True


def _unsafe(value: Any) -> Any:
    if isinstance(value, str):
        return UnsafeText(value)
    if isinstance(value, dict):
        return {key: _unsafe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_unsafe(item) for item in value]
    return value


def _parse_group(where: str, name: str, body: Any, data: InventoryData) -> list[str]:
    at = SourceLocation(where)
    group = data.add_group(name, at)
    if not isinstance(body, dict):
        body = {"hosts": body}
    elif not any(key in body for key in ("hosts", "vars", "children")):
        # Ansible's old short form: a host named after the group; its values are never templated
        body = {"hosts": [group], "vars": _unsafe(body)}
    hosts = body.get("hosts", [])
    if not isinstance(hosts, list):
        raise InventoryError(f"{where}: '{group}.hosts' must be a list, not {_kind(hosts)}")
    for host in hosts:
        data.add_host(host, group, at=at)
    variables = body.get("vars", {})
    if not isinstance(variables, dict):
        raise InventoryError(f"{where}: '{group}.vars' must be an object, not {_kind(variables)}")
    for key, value in variables.items():
        data.set_variable(group, key, value)
    children = body.get("children", [])
    if not isinstance(children, list):
        raise InventoryError(f"{where}: '{group}.children' must be a list, not {_kind(children)}")
    for child in children:
        data.add_child(group, data.add_group(child, at), at)
    return hosts
