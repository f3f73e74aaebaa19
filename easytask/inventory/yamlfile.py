"""YAML (and JSON) inventories and vars files, read with positions kept for error messages."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from easytask.errors import InventoryError, SourceLocation
from easytask.inventory.hostnames import RangeError, expand_host_pattern
from easytask.inventory.model import InventoryData
from easytask.sourceyaml import Source, UnsafeText, YamlError, parse_yaml, type_name
from easytask.vault import Vault, VaultError, VaultText

__all__ = ["VaultFileError", "load_document", "parse_structured"]


class VaultFileError(InventoryError):
    """A vault value or file of the inventory cannot be decrypted."""


def _json_object(pairs: list[tuple[str, Any]]) -> Any:
    if len(pairs) == 1 and pairs[0][0] == "__ansible_unsafe" and isinstance(pairs[0][1], str):
        return UnsafeText(pairs[0][1])
    return dict(pairs)


def load_document(text: str, path: str, vault: Vault | None = None) -> Source:
    """Parse JSON, or else YAML (Ansible tries JSON first too); errors name file:line:col.

    `!vault` values (in JSON `{"__ansible_vault": ...}`) and a file encrypted whole are
    decrypted with `vault` (none: no password)."""
    vault = vault if vault is not None else Vault()

    def json_object(pairs: list[tuple[str, Any]]) -> Any:
        if len(pairs) == 1 and pairs[0][0] == "__ansible_vault" and isinstance(pairs[0][1], str):
            try:
                return VaultText(vault.decrypt_text(pairs[0][1]), pairs[0][1])
            except VaultError as exc:
                raise VaultFileError(str(exc), location=SourceLocation(path)) from None
        return _json_object(pairs)

    try:
        return Source(path, text, json.loads(text, object_pairs_hook=json_object))
    except ValueError:
        pass
    try:
        return parse_yaml(text, path, vault=vault)
    except YamlError as exc:
        error = VaultFileError if exc.vault else InventoryError
        raise error(exc.message, location=exc.location) from None


def parse_structured(doc: Source, data: InventoryData, *, kind: str = "YAML") -> None:
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
    def __init__(self, doc: Source, data: InventoryData, kind: str) -> None:
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
