"""Inventory data written as `ansible-inventory` writes it: JSON (sorted, indent 4, dates in ISO
form, `!unsafe` and `!vault` values marked) and YAML (block style, anchors for shared values)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from typing import Any

import yaml

from easytask.sourceyaml import UnsafeText
from easytask.vault import VaultText


def jsonable(value: Any) -> Any:
    """Variables as Ansible writes them in JSON: dates in ISO form, `!unsafe` strings marked,
    `!vault` values as their ciphertext."""
    if isinstance(value, VaultText) and value.ciphertext is not None:
        return {"__ansible_vault": value.ciphertext}
    if isinstance(value, UnsafeText):
        return {"__ansible_unsafe": str(value)}
    if isinstance(value, Mapping):
        return {_json_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value


def _json_key(key: Any) -> Any:
    # Keys become strings before sorting, so that {1: a, two: b} can be written at all.
    if isinstance(key, str) or not isinstance(key, (int, float, type(None))):
        return key
    return json.dumps(key)


class _YamlDumper(yaml.SafeDumper):
    """Ansible's dumper for what an inventory holds: `!unsafe` strings written as plain ones,
    anchors for shared lists and mappings only."""

    def ignore_aliases(self, data: Any) -> bool:
        return isinstance(data, (datetime.date, datetime.time)) or super().ignore_aliases(data)


_YamlDumper.add_representer(UnsafeText, lambda dumper, value: dumper.represent_str(str(value)))


def dumps_yaml(data: Any) -> str:
    """YAML formatted as ansible-inventory --yaml prints it: block style, sorted keys."""
    return yaml.dump(data, Dumper=_YamlDumper, default_flow_style=False, allow_unicode=True)


def dumps_json(data: Any) -> str:
    """JSON formatted exactly as ansible-inventory prints it: sorted keys, indent 4, UTF-8."""
    return json.dumps(jsonable(data), sort_keys=True, indent=4, ensure_ascii=False)
