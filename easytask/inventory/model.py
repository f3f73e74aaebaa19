"""Hosts and groups, and the rules Ansible applies while an inventory is being built."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from easytask.errors import InventoryError, SourceLocation

__all__ = ["Group", "Host", "InventoryData"]


@dataclass
class Host:
    """One inventory host: its own variables and the groups it was put in directly."""

    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    groups: list[str] = field(default_factory=list)
    source: str | None = None


@dataclass
class Group:
    """One inventory group: its own variables, direct hosts and child groups, in inventory order."""

    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    parents: list[str] = field(default_factory=list)
    priority: int = 1
    depth: int = 0


def _fail(message: str, at: SourceLocation | None) -> InventoryError:
    return InventoryError(message, location=at)


class InventoryData:
    """An inventory under construction; each method follows what Ansible's InventoryData does."""

    def __init__(self) -> None:
        self.hosts: dict[str, Host] = {}
        self.groups: dict[str, Group] = {}
        self.warnings: list[str] = []
        self.current_source: str | None = None
        for name in ("all", "ungrouped"):
            self.add_group(name)
        self.add_child("all", "ungrouped")

    @classmethod
    def copy_of(cls, hosts: dict[str, Host], groups: dict[str, Group]) -> InventoryData:
        """A builder holding deep copies of existing hosts and groups."""
        data = cls.__new__(cls)
        data.hosts = copy.deepcopy(hosts)
        data.groups = copy.deepcopy(groups)
        data.warnings = []
        data.current_source = None
        return data

    def warn(self, message: str, at: SourceLocation | None = None) -> None:
        """Record a warning; the inventory is still usable."""
        self.warnings.append(f"{at}: {message}" if at else message)

    def add_group(self, name: Any, at: SourceLocation | None = None) -> str:
        """Add a group unless it exists; return its name."""
        if not name:
            raise _fail(f"invalid group name {name!r}: a group name cannot be empty", at)
        if not isinstance(name, str):
            raise _fail(f"invalid group name {name!r}: a group name must be a string", at)
        if name not in self.groups:
            self.groups[name] = Group(name)
        return name

    def add_host(
        self,
        name: Any,
        group: str | None = None,
        port: int | None = None,
        at: SourceLocation | None = None,
    ) -> str:
        """Add a host unless it exists (the port only counts the first time), and put it in a group."""
        if not name:
            raise _fail("a host name cannot be empty", at)
        if not isinstance(name, str):
            raise _fail(f"invalid host name {name!r}: a host name must be a string", at)
        if group is not None and group not in self.groups:
            raise _fail(f"unknown group {group!r}", at)
        host = self.hosts.get(name)
        if host is None:
            host = self.hosts[name] = Host(name, source=self.current_source)
            if port:
                host.vars["ansible_port"] = int(port)
        if group is not None:
            self._put_host(self.groups[group], host)
        return name

    # A host is in a group's `hosts` exactly when the group is in the host's `groups` (these two
    # alone change either): membership is asked of the host's list, a few groups long, not of
    # the group's, which holds thousands of hosts in a large fleet (10,000 agents in one group
    # took 0.4 s to merge).

    def _put_host(self, group: Group, host: Host) -> None:
        if group.name not in host.groups:
            group.hosts.append(host.name)
            host.groups.append(group.name)

    def _drop_host(self, group: Group, host: Host) -> None:
        if group.name in host.groups:
            group.hosts.remove(host.name)
            host.groups.remove(group.name)

    def add_child(self, parent: str, child: str, at: SourceLocation | None = None) -> None:
        """Make a group (or, as Ansible allows, a host) a member of a group."""
        if parent not in self.groups:
            raise _fail(f"unknown group {parent!r}", at)
        group = self.groups[parent]
        if child in self.groups:
            self._add_child_group(group, self.groups[child], at)
        elif child in self.hosts:
            self._put_host(group, self.hosts[child])
        else:
            raise _fail(f"{child!r} is neither a known host nor a known group", at)

    def _add_child_group(self, parent: Group, child: Group, at: SourceLocation | None) -> None:
        if child.name in parent.children:
            return
        path = self._path_down(child.name, parent.name)
        if path is not None:
            cycle = " -> ".join([*path, child.name])
            raise _fail(f"group {child.name!r} would be its own ancestor: {cycle}", at)
        parent.children.append(child.name)
        if parent.name not in child.parents:
            child.parents.append(parent.name)

    def _path_down(self, start: str, goal: str) -> list[str] | None:
        """A chain of child links from start to goal, if there is one."""
        stack: list[list[str]] = [[start]]
        seen: set[str] = set()
        while stack:
            path = stack.pop()
            if path[-1] == goal:
                return path
            if path[-1] in seen:
                continue
            seen.add(path[-1])
            for kid in reversed(self.groups[path[-1]].children):
                stack.append([*path, kid])
        return None

    def set_variable(
        self, entity: str, key: Any, value: Any, at: SourceLocation | None = None
    ) -> None:
        """Set a variable on a group or host; a group wins when both have the name, as in Ansible."""
        if entity in self.groups:
            group = self.groups[entity]
            if key == "ansible_group_priority":
                try:
                    group.priority = int(value)
                except (TypeError, ValueError):
                    raise _fail(
                        f"ansible_group_priority must be an integer, got {value!r}", at
                    ) from None
            else:
                group.vars[key] = copy.deepcopy(value)  # a YAML alias is a copy, as in Ansible
        elif entity in self.hosts:
            self.hosts[entity].vars[key] = copy.deepcopy(value)
        else:
            raise _fail(f"{entity!r} is neither a known host nor a known group", at)

    def ancestors(self, group: str) -> set[str]:
        """Every group above the given one."""
        out: set[str] = set()
        todo = list(self.groups[group].parents)
        while todo:
            name = todo.pop()
            if name not in out:
                out.add(name)
                todo.extend(self.groups[name].parents)
        return out

    def host_groups(self, host: str) -> set[str]:
        """The groups a host is in, directly or through child groups."""
        out: set[str] = set()
        for name in self.hosts[host].groups:
            out.add(name)
            out |= self.ancestors(name)
        return out

    def reconcile(self) -> None:
        """Apply Ansible's closing rules: top groups go under `all`, lone hosts into `ungrouped`."""
        for name, group in self.groups.items():
            if name != "all" and not group.parents:
                self.add_child("all", name)
        ungrouped = self.groups["ungrouped"]
        for host in self.hosts.values():
            mine = self.host_groups(host.name)
            if "ungrouped" in mine:
                if mine - {"all", "ungrouped"}:
                    self._drop_host(ungrouped, host)
            elif not mine or mine == {"all"}:
                self._put_host(ungrouped, host)
        for name in self.groups:
            if name in self.hosts:
                self.warn(f"found both a group and a host named {name!r}")
        self._set_depths()

    def _set_depths(self) -> None:
        """A group's depth is its longest chain of parents up to `all`."""
        depth: dict[str, int] = {}

        def walk(name: str) -> int:
            if name not in depth:
                parents = self.groups[name].parents
                depth[name] = max((walk(p) + 1 for p in parents), default=0)
            return depth[name]

        for name, group in self.groups.items():
            group.depth = walk(name)
