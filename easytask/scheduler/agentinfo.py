"""What the scheduler keeps in memory about one agent: its link, slots, facts and headroom."""

from __future__ import annotations

import json
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from easytask.headroom import Headroom, Limits, busy_reason
from easytask.store.audit import AuditNote
from easytask.store.models import AgentState, utcnow
from easytask.transport.agentlink import AgentLink

if TYPE_CHECKING:
    from easytask.store.db import Store


@dataclass
class AgentInfo:
    """What the scheduler keeps in memory about one agent."""

    name: str
    fingerprint: str
    state: str
    slots: int = 4
    groups: list[str] = field(default_factory=list)  # the labels it reports
    approved: list[str] = field(default_factory=list)  # the labels an admin approved
    facts: dict[str, Any] = field(default_factory=dict)
    link: AgentLink | None = None
    running: int = 0
    last_seen: float = 0.0
    busy: str = ""  # why it takes no new work now (over a limit), or ""
    limits: Limits = field(default_factory=Limits)  # the server's (inventory) limits for it

    @property
    def online(self) -> bool:
        """Accepted and connected now (busy or not)."""
        return self.link is not None and self.state == AgentState.ACCEPTED

    @property
    def headroom(self) -> Headroom:
        """Its room for work: free slots as this server counts them, load and memory as it
        last reported them."""
        mem = self.facts.get("mem_available")
        return Headroom(
            free_slots=max(self.slots - self.running, 0),
            load1=self.load,
            cpus=int(self.facts.get("cpus") or 1),
            mem_available=mem if isinstance(mem, int) else None,
        )

    @property
    def own_limits(self) -> Limits:
        """The limits the agent reports (its --max-load and --min-free-memory)."""
        load, mem = self.facts.get("max_load"), self.facts.get("min_free_memory")
        return Limits(
            float(load) if isinstance(load, int | float) else None,
            mem if isinstance(mem, int) else None,
        )

    def judge(self) -> str:
        """Why it is busy now under the tighter of its own and the server's limits, or ""."""
        return busy_reason(self.headroom, self.own_limits.tighter(self.limits))

    @property
    def member_of(self) -> list[str]:
        """The groups its labels place it in: those it reports that an admin approved."""
        return [g for g in self.groups if g in self.approved]

    @property
    def load(self) -> float:
        """The host's 1-minute load average as last reported."""
        loads = self.facts.get("load") or [0.0]
        return float(loads[0])


def busy_note(name: str, addr: str, busy: str, was: str) -> AuditNote:
    """The audit event of a change: agent.busy (with why) or agent.ready (with why it was)."""
    action = "agent.busy" if busy else "agent.ready"
    detail = {"agent": name, "reason": busy} if busy else {"agent": name, "was": was}
    return AuditNote(name, action, f"agent {addr}", detail)


def going_online(
    link: AgentLink, server_id: str, fields: dict[str, Any], info: AgentInfo | None
) -> tuple[dict[str, Any], list[AuditNote], str]:
    """What an agent's record becomes as it comes online on this server (`fields`: from its
    hello; `info`: as known before, None for one just enrolled), its audit events, and whether
    it is busy: judged by what it says in its hello, before it can be given work."""
    assert link.name is not None
    name = link.name
    facts = json.loads(fields["facts"])
    state = info.state if info is not None else AgentState.ACCEPTED
    said = AgentInfo(name, link.fingerprint, state, fields["slots"], facts=facts)
    if info is not None:
        said.running, said.limits = info.running, info.limits
    facts["busy"] = busy = said.judge()
    was = info.busy if info is not None else ""
    detail = {"agent": name, "server": server_id}
    notes = [AuditNote(name, "agent.online", f"agent {link.addr}", detail)]
    if bool(busy) != bool(was):
        notes.append(busy_note(name, link.addr, busy, was))
    online = {
        **fields,
        "facts": json.dumps(facts),
        "connected": True,
        "server": server_id,
        "last_seen": utcnow(),
    }
    return online, notes, busy


class RegistryPart:
    """What a part of the registry mixed into `AgentRegistry` (its gate, its heartbeats) uses
    of the whole: its agents, its store, and the registry's own ways to act on a change."""

    agents: dict[str, AgentInfo]
    store: Store

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        raise NotImplementedError

    def _publish(self, name: str) -> None:
        raise NotImplementedError

    def _wake(self, name: str) -> None:
        raise NotImplementedError
