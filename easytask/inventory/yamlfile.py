"""YAML (and JSON) inventories and vars files, read with positions kept for error messages."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

import yaml

from easytask.errors import InventoryError, SourceLocation
from easytask.inventory.hostnames import RangeError, expand_host_pattern
from easytask.inventory.model import InventoryData

__all__ = ["Document", "UnsafeText", "load_document", "parse_structured", "type_name"]

_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class UnsafeText(str):
    """A string tagged `!unsafe`: it is never rendered as a template."""

    __slots__ = ()


def type_name(value: Any) -> str:
    """What a value is, for messages: "null", "a list", "an integer", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """PyYAML's safe loader that records where each mapping and each of its keys starts."""

    def __init__(self, stream: str, path: str) -> None:
        super().__init__(stream)
        self.path = path
        self.marks: dict[int, tuple[yaml.Mark, dict[Any, yaml.Mark]]] = {}

    def construct_marked_map(self, node: yaml.MappingNode) -> Iterator[dict[Any, Any]]:
        data: dict[Any, Any] = {}
        yield data
        data.update(self.construct_mapping(node))
        keys: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node)
            try:
                # The last occurrence wins, as it does for the value (and over `<<` merges).
                keys[key] = key_node.start_mark
            except TypeError:  # an unhashable key; construct_mapping has complained already
                pass
        self.marks[id(data)] = (node.start_mark, keys)

    def construct_unsafe(self, node: yaml.Node) -> Any:
        if isinstance(node, yaml.ScalarNode):
            return UnsafeText(self.construct_scalar(node))
        return _unsafe(self.construct_object(node, deep=True))

    def construct_vault(self, node: yaml.Node) -> Any:
        mark = node.start_mark
        raise InventoryError(
            "Ansible Vault values (!vault) are not supported",
            location=SourceLocation(self.path, mark.line + 1, mark.column + 1),
        )


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_marked_map)
_Loader.add_constructor("!unsafe", _Loader.construct_unsafe)
_Loader.add_constructor("!vault", _Loader.construct_vault)


def _unsafe(value: Any) -> Any:
    if isinstance(value, str):
        return UnsafeText(value)
    if isinstance(value, list):
        return [_unsafe(v) for v in value]
    if isinstance(value, dict):
        return {k: _unsafe(v) for k, v in value.items()}
    return value


def _json_object(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] == "__ansible_unsafe" and isinstance(pairs[0][1], str):
        return UnsafeText(pairs[0][1])
    return dict(pairs)


class Document:
    """A parsed YAML or JSON file and the positions of its mappings (YAML only)."""

    def __init__(self, path: str, data: Any, marks: Mapping[int, Any] | None = None) -> None:
        self.path = path
        self.data = data
        self._marks = marks or {}

    def at(self, mapping: Any = None, key: Any = None) -> SourceLocation:
        """Where a mapping, or one of its keys, starts; the file alone when unknown."""
        entry = self._marks.get(id(mapping)) if mapping is not None else None
        if entry is None:
            return SourceLocation(self.path)
        mark = entry[0]
        if key is not None:
            try:
                mark = entry[1].get(key, mark)
            except TypeError:
                pass
        return SourceLocation(self.path, mark.line + 1, mark.column + 1)


def load_document(text: str, path: str) -> Document:
    """Parse JSON, or else YAML (Ansible tries JSON first too); errors name file:line:col."""
    try:
        return Document(path, json.loads(text, object_pairs_hook=_json_object))
    except ValueError:
        pass
    loader = _Loader(text, path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = (
            SourceLocation(path, mark.line + 1, mark.column + 1) if mark else SourceLocation(path)
        )
        problem = exc.problem or exc.context or "not valid YAML"
        raise InventoryError(f"invalid YAML: {problem}", location=where) from None
    except yaml.YAMLError as exc:
        raise InventoryError(f"invalid YAML: {exc}", location=SourceLocation(path)) from None
    finally:
        loader.dispose()
    return Document(path, data, loader.marks)


def parse_structured(doc: Document, data: InventoryData, *, kind: str = "YAML") -> None:
    """Add the groups of a YAML/JSON (or TOML) inventory document, as Ansible's plugins do."""
    top = doc.data
    if not isinstance(top, Mapping):
        raise InventoryError(
            f"a {kind} inventory must be a mapping of group names, got {type_name(top)}",
            location=doc.at(),
        )
    if top.get("plugin"):
        raise InventoryError(
            f"inventory plugins are not supported (plugin: {top['plugin']}); only static inventories are",
            location=doc.at(top, "plugin"),
        )
    parser = _GroupParser(doc, data, kind)
    for name, body in top.items():
        parser.group(name, body, doc.at(top, name))


class _GroupParser:
    def __init__(self, doc: Document, data: InventoryData, kind: str) -> None:
        self.doc = doc
        self.data = data
        self.toml = kind == "TOML"

    def group(self, name: Any, body: Any, at: SourceLocation) -> Any:
        """Add one group and its sections; return its name (also when skipped, as Ansible does)."""
        if body is not None and not isinstance(body, Mapping):
            self.data.warn(
                f"skipping {name!r}: a group must be a mapping, got {type_name(body)}", at
            )
            return name
        name = self.data.add_group(name, at)
        if body is None:
            return name
        sections = dict(body)
        for section in ("vars", "children", "hosts"):
            value = sections.get(section)
            if isinstance(value, str) and not self.toml:
                sections[section] = value = {value: None}
            wanted = (list,) if self.toml and section == "children" else (Mapping,)
            if section in sections and not isinstance(value, (*wanted, type(None))):
                raise InventoryError(
                    f"invalid {section!r} in group {name!r}: expected a"
                    f" {'list' if wanted == (list,) else 'mapping'}, got {type_name(value)}",
                    location=self.doc.at(body, section),
                )
        for key, value in sections.items():
            where = self.doc.at(body, key)
            if key == "vars" and value:
                for var, var_value in value.items():
                    self.data.set_variable(name, var, var_value, self.doc.at(value, var))
            elif key == "children" and value:
                for child in value:
                    child_body = None if self.toml else value[child]
                    child_at = where if self.toml else self.doc.at(value, child)
                    child = self.group(child, child_body, child_at)
                    self.data.add_child(name, child, child_at)
            elif key == "hosts" and value:
                for pattern, host_vars in value.items():
                    self._hosts(name, pattern, host_vars, self.doc.at(value, pattern))
            elif key not in ("vars", "children", "hosts"):
                if isinstance(value, Mapping):
                    self.data.warn(
                        f"skipping unknown key {key!r} in group {name!r}"
                        " (expected vars, children or hosts)",
                        where,
                    )
                elif value is not None:
                    self.data.warn(f"skipping key {key!r} in group {name!r}: not a mapping", where)
        return name

    def _hosts(self, group: str, pattern: Any, host_vars: Any, at: SourceLocation) -> None:
        if not isinstance(pattern, str):
            raise InventoryError(
                f"host pattern {pattern!r} must be a string (quote numbers)", location=at
            )
        try:
            names, port = expand_host_pattern(pattern)
        except RangeError as exc:
            raise InventoryError(str(exc), location=at) from None
        host_vars = host_vars or {}
        if not isinstance(host_vars, Mapping):
            raise InventoryError(
                f"variables of host {pattern!r} must be a mapping, got {type_name(host_vars)}",
                location=at,
            )
        for host in names:
            self.data.add_host(host, group, port, at)
            for key, value in host_vars.items():
                self.data.set_variable(host, key, value, self.doc.at(host_vars, key))
