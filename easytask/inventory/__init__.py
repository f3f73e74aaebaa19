"""Ansible-compatible inventories: INI/YAML files and directories, variables, host patterns."""

from easytask.inventory.dumps import dumps_json, dumps_yaml
from easytask.inventory.load import (
    Group,
    Host,
    Inventory,
    ScriptRunner,
    UnsafeText,
    load_inventory,
)
from easytask.inventory.patterns import split_pattern

__all__ = [
    "Group",
    "Host",
    "Inventory",
    "ScriptRunner",
    "UnsafeText",
    "dumps_json",
    "dumps_yaml",
    "load_inventory",
    "split_pattern",
]
