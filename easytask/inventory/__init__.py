"""Ansible-compatible inventories: INI/YAML files and directories, variables, host patterns."""

from easytask.inventory.load import Group, Host, Inventory, UnsafeText, dumps_json, load_inventory
from easytask.inventory.patterns import split_pattern

__all__ = [
    "Group",
    "Host",
    "Inventory",
    "UnsafeText",
    "dumps_json",
    "load_inventory",
    "split_pattern",
]
