"""Turn an ad hoc command and a host pattern into one planned run per host (pure code)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from easytask.errors import InventoryError
from easytask.plan.become import host_request

CONNECTIONS = ("agent", "ssh")


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


def connection_of(host: str, hostvars: dict[str, Any]) -> str:
    """`easytask_connection` of a host (default: agent), checked."""
    value = str(hostvars.get("easytask_connection", "agent"))
    if value not in CONNECTIONS:
        raise InventoryError(
            f"host {host!r}: easytask_connection must be one of {', '.join(CONNECTIONS)}, not {value!r}"
        )
    return value


def plan_adhoc(inventory: HostSource, pattern: str, command: str) -> list[PlannedRun]:
    """One run per host the pattern selects, in the pattern's host order."""
    runs = []
    for host in inventory.select(pattern):
        hostvars = inventory.host_vars(host)
        host_request(host, hostvars)  # its ansible_become* variables, checked before any run
        runs.append(PlannedRun(host, connection_of(host, hostvars), command, hostvars))
    return runs
