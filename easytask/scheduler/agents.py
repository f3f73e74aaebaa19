"""The agent registry: who may connect, who is online, and how busy each agent is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from easytask.errors import Conflict
from easytask.scheduler import events
from easytask.scheduler.agentinfo import AgentInfo
from easytask.scheduler.batches import Gathered
from easytask.scheduler.gate import Gate
from easytask.scheduler.heartbeats import Heartbeats
from easytask.scheduler.hello import stored_facts
from easytask.scheduler.hub import LiveHub
from easytask.store.audit import AuditNote
from easytask.store.db import Store
from easytask.store.identities import HELD_BY, AgentChange
from easytask.store.models import Agent, AgentState, utcnow
from easytask.transport.agentlink import AgentLink

log = logging.getLogger("easytask.server")


class AgentRegistry(Gate, Heartbeats):
    """Tracks known and connected agents and their free slots; judges who may connect
    (`Gate`) and their heartbeats, busy state and ranking (`Heartbeats`)."""

    def __init__(self, store: Store, hub: LiveHub, server_id: str) -> None:
        self.store = store
        self.hub = hub
        self.server_id = server_id
        self.agents: dict[str, AgentInfo] = {}
        # runs waiting for a slot, by agent name: a change of one agent wakes only its own
        # (a fleet reconnecting after a restart has a run waiting on every agent)
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.refused: list[dict[str, Any]] = []  # recent refusals, for the API and tests
        # pending requests one address may hold, and make per gate.PENDING_WINDOW seconds
        self.pending_max = 10
        self._new_pending: dict[str, deque[float]] = {}
        self._audited: dict[tuple[str | None, str, str, str], float] = {}
        # how many deletes of each name started here: a hello that began before one is refused
        self._deletes: dict[str, int] = {}
        # Hooks for servers sharing the database: an agent came online here; an agent's
        # enrolment state changed here (the others reload it).
        self.on_online: list[Callable[[str], None]] = []
        self.on_changed: list[Callable[[str], None]] = []
        # agents going online or lost meanwhile: their records and audit events in one transaction
        self._changes: Gathered[AgentChange, Agent | None] = Gathered(
            lambda many: self.store.call(self.store.update_agents, many)
        )

    async def load(self) -> None:
        """Read every known agent from the store."""
        await self.store.call(self.store.disconnect_all_agents, self.server_id)
        for row in await self.store.call(self.store.list_agents):
            self.agents[row.name] = self._info(row)

    @staticmethod
    def _info(row: Agent, checked: bool = False) -> AgentInfo:
        """An agent's record as kept here (`checked`: its facts are a hello's, just checked)."""
        facts = json.loads(row.facts) if checked else stored_facts(row.facts)
        return AgentInfo(
            name=row.name,
            fingerprint=row.fingerprint,
            state=row.state,
            slots=row.slots,
            groups=[g for g in row.groups.split(",") if g],
            approved=[g for g in row.approved_groups.split(",") if g],
            facts=facts,
            busy=str(facts.get("busy") or ""),
        )

    def lost(self, link: AgentLink, exc: Exception | None) -> None:
        """A link went away: the agent is unreachable until it comes back."""
        info = self.agents.get(link.name or "")
        if info is None or info.link is not link:
            return
        info.link = None
        log.warning("agent %s unreachable: %s", info.name, exc or "connection closed")
        self._spawn(self._mark_lost(info.name, link.addr, str(exc or "connection closed")))

    async def _mark_lost(self, name: str, addr: str, reason: str) -> None:
        note = AuditNote(
            name,
            "agent.lost",
            f"agent {addr}",
            {"agent": name, "server": self.server_id, "reason": reason},
        )
        lost = {"connected": False, "last_seen": utcnow(), HELD_BY: self.server_id}
        await self._changes.put((name, note, lost))
        self._wake(name)
        self._publish(name)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro, name="agent-registry")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _publish(self, name: str) -> None:
        info = self.agents.get(name)
        if info is not None:
            self.hub.publish(events.agent_state(name, self.status(info)), "agents")

    def _wake(self, name: str) -> None:
        """The runs waiting for agent `name` look at it again (it changed)."""
        for waiter in self._waiters.pop(name, ()):
            if not waiter.done():
                waiter.set_result(None)

    # -- administration ---------------------------------------------------------------------

    async def set_state(
        self,
        name: str,
        state: str,
        audit: AuditNote | None = None,
        fingerprint: str | None = None,
    ) -> Agent | None:
        """Accept or revoke an agent (with `audit`, its audit event in the same transaction);
        with `fingerprint`, only if the agent holds that key (else `Conflict`);
        revoking closes its link."""
        row = await self.store.call(self.store.set_agent_state, name, state, audit, fingerprint)
        if row is None:
            return None
        info = self.agents.setdefault(name, self._info(row))
        info.state = state
        info.fingerprint = row.fingerprint
        if state == AgentState.REVOKED and info.link is not None:
            info.link.close()
            info.link = None
        self._wake(name)
        self._publish(name)
        self._changed_here(name)
        return row

    async def set_groups(
        self,
        name: str,
        groups: list[str],
        approve: bool,
        audit: AuditNote | None = None,
        fingerprint: str | None = None,
    ) -> Agent | None:
        """Approve (or withdraw) group labels of an agent, audited in the same transaction
        (see `Store.set_agent_groups`); the change counts for the next plan."""
        row = await self.store.call(
            self.store.set_agent_groups, name, groups, approve, audit, fingerprint
        )
        if row is None:
            return None
        fresh = self._info(row)
        info = self.agents.setdefault(name, fresh)
        info.approved = fresh.approved
        if info.link is None:
            info.groups = fresh.groups
        self._publish(name)
        self._changed_here(name)
        return row

    async def delete(self, name: str, audit: AuditNote | None = None) -> Agent | None:
        """Delete an agent's record (pending, revoked, or accepted and not connected to any
        server; else `Conflict`), with `audit` in the same transaction; None if unknown."""
        info = self.agents.get(name)
        if info is not None and info.link is not None:
            raise Conflict(f"agent {name!r} is connected: revoke it first")
        # before the first await: a hello of this name in progress now is refused, whatever
        # order its writes and this delete reach the store in
        self._deletes[name] = self._deletes.get(name, 0) + 1
        row = await self.store.call(self.store.delete_agent, name, audit)
        self.agents.pop(name, None)
        if row is not None:
            self.hub.publish(events.agent_state(name, "deleted"), "agents")
            self._changed_here(name)
        return row

    def _changed_here(self, name: str) -> None:
        for hook in self.on_changed:
            hook(name)

    async def reload(self, name: str) -> None:
        """Read one agent again from the store (another server enrolled, accepted or revoked it)."""
        self.refresh(name, await self.store.call(self.store.get_agent, name))

    def refresh(self, name: str, row: Agent | None) -> None:
        """Take one agent's record as just read; a revoked agent's link here is closed."""
        if row is None:  # deleted
            gone = self.agents.pop(name, None)
            if gone is not None and gone.link is not None:
                gone.link.close()
            return
        fresh = self._info(row)
        info = self.agents.get(name)
        if info is None:
            self.agents[name] = fresh
        else:
            info.state, info.fingerprint = fresh.state, fresh.fingerprint
            info.approved = fresh.approved
            if info.link is None:
                info.slots, info.groups, info.facts = fresh.slots, fresh.groups, fresh.facts
                info.busy = fresh.busy
            if info.link is not None and (
                info.state != AgentState.ACCEPTED or info.link.fingerprint != info.fingerprint
            ):
                info.link.close()
                info.link = None
        self._wake(name)
        self._publish(name)

    @staticmethod
    def status(info: AgentInfo) -> str:
        """online | busy | unreachable | pending | revoked."""
        if info.state != AgentState.ACCEPTED:
            return info.state
        if info.link is None:
            return "unreachable"
        return "busy" if info.busy else "online"

    def row_status(self, row: Agent, live_servers: set[str]) -> str:
        """An agent's status as the console shows it: online (or busy, as last stored) also
        when another live server sharing the database holds its link."""
        info = self.agents.get(row.name)
        status = self.status(info) if info else row.state
        if status == "unreachable" and row.connected and row.server in live_servers:
            return "busy" if stored_facts(row.facts).get("busy") else "online"
        return status

    def declared_hosts(self) -> dict[str, list[str]]:
        """Accepted agents as extra inventory hosts, each with the groups its approved labels
        place it in (a label not approved places it nowhere; the inventory's own groups of a
        host it lists stay as they are)."""
        return {
            name: info.member_of
            for name, info in self.agents.items()
            if info.state == AgentState.ACCEPTED
        }

    def declared_facts(self) -> dict[str, dict[str, Any]]:
        """What each accepted agent reports about its host (for its fact variables)."""
        return {
            name: info.facts
            for name, info in self.agents.items()
            if info.state == AgentState.ACCEPTED and info.facts
        }

    # -- capacity ---------------------------------------------------------------------------

    def try_acquire(self, name: str, fresh: bool = True) -> AgentInfo | None:
        """Take a slot if the agent is online with one free now (no waiting); a `fresh` run
        (new work, not one to re-attach) also needs it not busy."""
        info = self.agents.get(name)
        if (
            info is not None
            and info.online
            and not (fresh and info.busy)
            and info.running < info.slots
        ):
            info.running += 1
            return info
        return None

    async def acquire(self, name: str, timeout: float, fresh: bool = True) -> AgentInfo | None:
        """Wait until the agent is online (and, for a `fresh` run, not busy) with a free slot
        and take it; None on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            info = self.try_acquire(name, fresh)
            if info is not None:
                return info
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            waiter: asyncio.Future[None] = loop.create_future()
            waiters = self._waiters.setdefault(name, [])
            waiters.append(waiter)
            try:
                async with asyncio.timeout(remaining):
                    await waiter
            except TimeoutError:
                return None
            finally:
                if waiter.cancel() or waiter.cancelled():  # timed out or cancelled: gone
                    with contextlib.suppress(ValueError):
                        waiters.remove(waiter)
                    if not waiters and self._waiters.get(name) is waiters:
                        del self._waiters[name]

    async def release(self, name: str) -> None:
        """Give back a slot."""
        info = self.agents.get(name)
        if info is not None and info.running > 0:
            info.running -= 1
        self._wake(name)

    async def close(self) -> None:
        """Close every link (after the acknowledgements waiting for it are sent)."""
        links = [info.link for info in self.agents.values() if info.link is not None]
        if links:
            await asyncio.wait([asyncio.create_task(ln.flush_acks()) for ln in links], timeout=2)
        for link in links:
            link.close()
        for task in list(self._tasks):
            await asyncio.gather(task, return_exceptions=True)
