"""Ansible-compatible inventories: load sources into an `Inventory`, merge vars, select hosts."""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from easytask.errors import InventoryError, NoHostsMatched, PatternError
from easytask.facts import fact_vars
from easytask.inventory.dumps import jsonable
from easytask.inventory.hostnames import is_ip_address
from easytask.inventory.model import Group, Host, InventoryData
from easytask.inventory.patterns import IMPLICIT_LOCALHOST
from easytask.inventory.patterns import select as select_hosts
from easytask.inventory.script import ScriptRunner
from easytask.inventory.sources import parse_host_list, parse_source
from easytask.inventory.varsfiles import VarsFiles
from easytask.sourceyaml import UnsafeText
from easytask.vault import Vault

__all__ = [
    "Group",
    "Host",
    "Inventory",
    "ScriptRunner",
    "UnsafeText",
    "load_inventory",
]

# Variables Ansible computes itself; `ansible-inventory` leaves them out of its output.
INTERNAL_VARS = frozenset((
    "ansible_async_path", "ansible_collection_name", "ansible_config_file",
    "ansible_dependent_role_names", "ansible_diff_mode", "ansible_facts", "ansible_forks",
    "ansible_inventory_sources", "ansible_limit", "ansible_play_batch", "ansible_play_hosts",
    "ansible_play_hosts_all", "ansible_play_role_names", "ansible_playbook_python",
    "ansible_role_name", "ansible_role_names", "ansible_run_tags", "ansible_skip_tags",
    "ansible_verbosity", "ansible_version", "inventory_dir", "inventory_file", "inventory_hostname",
    "inventory_hostname_short", "groups", "group_names", "hostvars", "playbook_dir", "play_hosts",
    "role_name", "role_names", "role_path", "role_uuid",
))  # fmt: skip


def load_inventory(
    paths: str | Path | Sequence[str | Path],
    scripts: ScriptRunner | None = None,
    vault: Vault | None = None,
) -> Inventory:
    """Load one or more inventory sources: files, directories, or `host1,host2,` lists.

    An executable file is an inventory script, run with `scripts` (without it, an error).
    No source at all gives an empty inventory (only the groups `all` and `ungrouped`).
    `vault` holds the passwords for `!vault` values and encrypted files (none: no password).
    """
    vault = vault if vault is not None else Vault()
    sources = [paths] if isinstance(paths, (str, Path)) else list(paths)
    data = InventoryData()
    var_dirs: list[Path] = []
    for source in sources:
        text = str(source)
        if "," in text and not os.path.exists(text):
            parse_host_list(text, data)
            continue
        path = Path(os.path.expanduser(text))
        if not path.exists():
            raise InventoryError(f"inventory source not found: {text}")
        parse_source(path, data, scripts, vault)
        var_dirs.append(path if path.is_dir() else path.parent)
    data.reconcile()
    return Inventory(data, [str(s) for s in sources], VarsFiles(var_dirs, vault))


class Inventory:
    """Hosts and groups in inventory order, with Ansible's variable precedence and host patterns."""

    def __init__(self, data: InventoryData, sources: list[str], var_files: VarsFiles) -> None:
        self.hosts: dict[str, Host] = data.hosts
        self.groups: dict[str, Group] = data.groups
        self.sources = sources
        self._var_files = var_files
        self._group_hosts: dict[str, list[str]] = {}
        self._implicit: dict[str, Host] = {}
        var_files.preload("group_vars", self.groups)
        var_files.preload("host_vars", self.hosts)
        self.warnings: list[str] = data.warnings + var_files.warnings
        self.facts: Mapping[str, Mapping[str, Any]] = {}  # host -> what its agent reports
        # hosts an online agent of their name reaches, whatever easytask_connection says
        self.via_agent: frozenset[str] = frozenset()
        # hosts that enrolled an agent (any state): `easytask_connection: auto` goes through it
        self.agent_hosts: frozenset[str] = frozenset()
        # `ansible_connection: local` hosts run on the server's own host (the admin allows it)
        self.local_allowed = False

    def __repr__(self) -> str:
        return f"<Inventory {len(self.hosts)} hosts, {len(self.groups)} groups from {self.sources}>"

    # -- hosts and groups ------------------------------------------------------------------

    def group_hosts(self, name: str) -> list[str]:
        """The hosts of a group and of its descendants: direct hosts, then child groups breadth-first."""
        if name not in self._group_hosts:
            order = [name, *self.groups[name].children]
            seen = set(order)
            level = order[1:]
            while level:
                below: list[str] = []
                for parent in level:
                    for kid in self.groups[parent].children:
                        if kid not in seen:
                            seen.add(kid)
                            below.append(kid)
                order.extend(below)
                level = below
            self._group_hosts[name] = list(
                dict.fromkeys(h for g in order for h in self.groups[g].hosts)
            )
        return self._group_hosts[name]

    def host_groups(self, name: str) -> list[str]:
        """The groups a host is in, directly or through child groups, sorted by name."""
        found: set[str] = set()
        todo = list(self._host(name).groups)
        while todo:
            group = todo.pop()
            if group not in found:
                found.add(group)
                todo.extend(self.groups[group].parents)
        return sorted(found)

    def select(self, pattern: str) -> list[str]:
        """The host names a pattern selects, in Ansible's order; raises NoHostsMatched/PatternError."""
        return select_hosts(self, pattern)

    def with_extra_hosts(
        self,
        extra: Mapping[str, Sequence[str]],
        facts: Mapping[str, Mapping[str, Any]] | None = None,
        via_agent: Collection[str] = (),
        agents: Iterable[str] = (),
    ) -> Inventory:
        """A copy with more hosts (e.g. connected agents) and group labels added; groups are
        created as needed. `facts` (host -> what its agent reports) become its fact variables
        (`ansible_facts`, `ansible_hostname`, ...) among its magic vars. A host of `via_agent`
        (an accepted agent of its name is online) is reached through that agent: its
        `easytask_connection` reads `agent` even where the inventory says `ssh`. `agents`: the
        hosts that enrolled an agent, in any state (`agent_hosts`)."""
        data = InventoryData.copy_of(self.hosts, self.groups)
        for name, labels in extra.items():
            if name not in data.hosts:
                data.add_host(name)
            if isinstance(labels, str):
                raise InventoryError(f"groups of extra host {name!r} must be a list, not a string")
            for label in labels:
                data.add_host(name, data.add_group(label))
        data.reconcile()
        merged = Inventory(data, self.sources, self._var_files)
        merged.facts = facts or {}  # named as variables when a host's are asked for
        merged.via_agent = frozenset(via_agent)
        merged.agent_hosts = frozenset(agents)
        return merged

    # -- variables -------------------------------------------------------------------------

    def host_vars(self, name: str) -> dict[str, Any]:
        """A host's variables merged with Ansible's precedence (what `ansible-inventory --host` shows).

        Lowest first: `all` vars of the inventory file, other groups' inventory vars (by depth,
        then ansible_group_priority, then name), group_vars/all, group_vars of the other groups
        in the same order, the host's inventory vars, host_vars/.
        """
        return copy.deepcopy(self._merged_vars(name))

    def _merged_vars(self, name: str) -> dict[str, Any]:
        """host_vars without the copy: values shared with the groups, as Ansible shares them (its
        YAML output then writes a value used by several hosts once, with an anchor)."""
        host = self._host(name)
        groups = self._sorted_groups([g for g in self.host_groups(name) if g != "all"])
        merged: dict[str, Any] = dict(self.groups["all"].vars)
        for group in groups:
            merged.update(self.groups[group].vars)
        for index in range(len(self._var_files.dirs)):
            merged.update(self._var_files.get(index, "group_vars", "all"))
        for index in range(len(self._var_files.dirs)):
            for group in groups:
                merged.update(self._var_files.get(index, "group_vars", group))
        merged.update(host.vars)
        for index in range(len(self._var_files.dirs)):
            merged.update(self._var_files.get(index, "host_vars", name))
        if name in self.via_agent:
            merged["easytask_connection"] = "agent"
        return {k: v for k, v in merged.items() if k not in INTERNAL_VARS}

    def host_var_origins(self, name: str) -> dict[str, str]:
        """Where each of a host's variables comes from: the last layer of `host_vars`'s chain that
        set it (`group all`, `group web`, `host`; a group_vars/ or host_vars/ file's path)."""
        groups = self._sorted_groups([g for g in self.host_groups(name) if g != "all"])
        files, dirs = self._var_files, range(len(self._var_files.dirs))
        layers: list[tuple[Mapping[str, Any], str]] = [(self.groups["all"].vars, "group all")]
        layers += [(self.groups[g].vars, f"group {g}") for g in groups]
        layers += [
            (files.get(i, "group_vars", "all"), f"{files.dirs[i]}/group_vars/all") for i in dirs
        ]
        layers += [
            (files.get(i, "group_vars", g), f"{files.dirs[i]}/group_vars/{g}")
            for i in dirs
            for g in groups
        ]
        layers.append((self._host(name).vars, "host"))
        layers += [
            (files.get(i, "host_vars", name), f"{files.dirs[i]}/host_vars/{name}") for i in dirs
        ]
        origins = {key: origin for values, origin in layers for key in values}
        if name in self.via_agent:
            origins["easytask_connection"] = "agent"
        return {k: v for k, v in origins.items() if k not in INTERNAL_VARS}

    def group_vars(self, name: str) -> dict[str, Any]:
        """A group's own variables: the inventory's, then its group_vars files (`--graph --vars`)."""
        if name not in self.groups:
            raise PatternError(f"no group named {name!r}")
        group = self.groups[name]
        merged = dict(group.vars)
        for index in range(len(self._var_files.dirs)):
            merged.update(self._var_files.get(index, "group_vars", name))
        if group.priority != 1:
            merged["ansible_group_priority"] = group.priority
        return copy.deepcopy({k: v for k, v in merged.items() if k not in INTERNAL_VARS})

    def magic_vars(self, name: str) -> dict[str, Any]:
        """The variables Ansible derives for a host: inventory_hostname, group_names, groups, …"""
        host = self._host(name)
        short = name if is_ip_address(name) else name.split(".")[0]
        source = os.path.abspath(host.source) if host.source else None
        return {
            **fact_vars(self.facts.get(name, {})),
            "inventory_hostname": name,
            "inventory_hostname_short": short,
            "group_names": [g for g in self.host_groups(name) if g != "all"],
            "groups": {g: list(self.group_hosts(g)) for g in self.groups},
            "inventory_file": source,
            "inventory_dir": os.path.dirname(source) if source else None,
        }

    def _sorted_groups(self, names: list[str]) -> list[str]:
        return sorted(
            names,
            key=lambda g: (self.groups[g].depth, self.groups[g].priority, self.groups[g].name),
        )

    def _host(self, name: str) -> Host:
        if name in self.hosts:
            return self.hosts[name]
        if name in IMPLICIT_LOCALHOST:  # Ansible's implicit localhost: local, not in `all`
            if name not in self._implicit:
                local = {
                    "ansible_python_interpreter": sys.executable,
                    "ansible_connection": "local",
                }
                self._implicit[name] = Host(name, vars=local)
            return self._implicit[name]
        raise NoHostsMatched(f"no host named {name!r} in the inventory")

    def own_host_vars(self, name: str) -> dict[str, Any]:
        """A host's own variables: the inventory's, then its host_vars files (`--export`)."""
        merged = dict(self._host(name).vars)
        for index in range(len(self._var_files.dirs)):
            merged.update(self._var_files.get(index, "host_vars", name))
        return copy.deepcopy({k: v for k, v in merged.items() if k not in INTERNAL_VARS})

    # -- output like ansible-inventory -------------------------------------------------------

    def to_list_json(self, export: bool = False) -> dict[str, Any]:
        """The data of `ansible-inventory --list [--export]` (dump it with `dumps_json` for the
        exact text); with export, group variables stay on their groups."""
        out: dict[str, Any] = {}
        seen: set[str] = set()

        def add(name: str) -> None:
            group = self.groups[name]
            entry: dict[str, Any] = {}
            if name != "all" and group.hosts:
                entry["hosts"] = list(group.hosts)
            if group.children:
                entry["children"] = list(group.children)
            if export and (values := self.group_vars(name)):
                entry["vars"] = jsonable(values)
            if entry:
                out[name] = entry
            for kid in group.children:
                if kid not in seen:
                    seen.add(kid)
                    add(kid)

        add("all")
        hostvars: dict[str, Any] = {}
        for host in self.group_hosts("all"):
            values = self.own_host_vars(host) if export else self.host_vars(host)
            if values:
                hostvars[host] = jsonable(values)
        out["_meta"] = {"hostvars": hostvars, "profile": "inventory_legacy"}
        return out

    def to_yaml_tree(self, export: bool = False) -> dict[str, Any]:
        """The tree `ansible-inventory --list --yaml [--export]` prints: a host's variables
        where it first appears, `{}` after that."""
        seen_hosts: set[str] = set()
        seen_groups: set[str] = set()

        def tree(name: str) -> dict[str, Any]:
            group = self.groups[name]
            children: dict[str, Any] = {}
            for kid in group.children:
                if kid in seen_groups:
                    children[kid] = {}
                else:
                    children.update(tree(kid))
                    seen_groups.add(kid)
            hosts: dict[str, Any] = {}
            for host in group.hosts if name != "all" else []:
                values: dict[str, Any] = {}
                if host not in seen_hosts:
                    seen_hosts.add(host)
                    values = self.own_host_vars(host) if export else self._merged_vars(host)
                hosts[host] = values
            entry = {"children": children, "hosts": hosts}
            if export:
                entry["vars"] = self.group_vars(name)
            entry = {key: value for key, value in entry.items() if value}
            return {name: entry} if entry else {}

        return tree("all")

    def graph(self, group: str = "all", with_vars: bool = False) -> str:
        """The tree `ansible-inventory --graph [GROUP] [--vars]` prints (without a final newline)."""
        if group not in self.groups:
            raise PatternError(f"no group named {group!r} (--graph needs a group name)")
        lines: list[str] = []

        def line(text: str, depth: int) -> None:
            lines.append("  |" * depth + "--" + text if depth else text)

        def show_vars(values: Mapping[str, Any], depth: int) -> None:
            for key, value in sorted(values.items()):
                line(f"{{{key} = {value}}}", depth)

        def walk(name: str, depth: int) -> None:
            line(f"@{name}:", depth)
            for kid in self.groups[name].children:
                walk(kid, depth + 1)
            if name != "all":
                for host in self.groups[name].hosts:
                    line(host, depth + 1)
                    if with_vars:
                        show_vars(self.host_vars(host), depth + 2)
            if with_vars:
                show_vars(self.group_vars(name), depth + 1)

        walk(group, 0)
        return "\n".join(lines)
