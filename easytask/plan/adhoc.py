"""Turn an ad hoc command and a host pattern into one planned run per host (pure code)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from easytask.errors import NoHostsMatched, UsageError
from easytask.plan.become import host_request
from easytask.plan.connection import connection_of
from easytask.templating import Vars, render

USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,63}")  # a remote user name (-u)


class HostSource(Protocol):
    """What planning needs of an inventory."""

    def select(self, pattern: str) -> list[str]: ...

    def host_vars(self, name: str) -> dict[str, Any]: ...


@dataclass
class PlannedRun:
    """One command on one host, with how the host is reached."""

    host: str
    connection: str
    command: str
    vars: dict[str, Any] = field(default_factory=dict)


def plan_adhoc(
    inventory: HostSource,
    pattern: str,
    command: str,
    *,
    limit: str | None = None,
    extra_vars: Mapping[str, Any] | None = None,
    user: str | None = None,
) -> list[PlannedRun]:
    """One run per host the pattern selects (and `limit` keeps), in the pattern's host order.

    With `extra_vars` (even empty: `-e` was given) the command is a template, rendered per host
    over its inventory and magic vars and then the extra vars, as Ansible renders `-a`; without,
    it runs as written. `user` is the SSH user of agentless hosts (`-u`); agents run commands as
    their own user, so a `user` for an agent host is refused rather than ignored.
    """
    if user is not None and not USER.fullmatch(user):
        raise UsageError(f"-u/--user {user!r} is not a user name")
    hosts = inventory.select(pattern)
    if limit:
        allowed = set(inventory.select(limit))
        hosts = [h for h in hosts if h in allowed]
        if not hosts:
            raise NoHostsMatched(f"no host of {pattern!r} is in --limit {limit!r}")
    magic = getattr(inventory, "magic_vars", None)
    agents: frozenset[str] = getattr(inventory, "agent_hosts", frozenset())
    allow_local = bool(getattr(inventory, "local_allowed", False))
    runs = []
    for host in hosts:
        hostvars = inventory.host_vars(host)
        host_request(host, hostvars)  # its ansible_become* variables, checked before any run
        connection = connection_of(host, hostvars, agents, allow_local)
        line = command
        if extra_vars is not None:
            base = dict(magic(host)) if callable(magic) else {}
            base.update(hostvars)
            base.setdefault("inventory_hostname", host)
            line = render(command, Vars(base, extra_vars), what=f"the command on {host}")
        if user is not None:
            hostvars = {**hostvars, "ansible_user": user}
        runs.append(PlannedRun(host, connection, line, hostvars))
    through = [r.host for r in runs if r.connection == "agent"]
    if user is not None and through:
        shown = ", ".join(through[:5]) + (
            f" and {len(through) - 5} more" if len(through) > 5 else ""
        )
        raise UsageError(
            f"-u/--user {user!r} is the SSH user of agentless hosts; {shown} run commands through "
            "their agent, as the agent's user (leave out -u, or narrow the pattern)"
        )
    return runs
