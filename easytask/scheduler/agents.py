"""The agent registry: who may connect, who is online, and how busy each agent is."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from easytask.errors import Conflict
from easytask.names import BadName, check_name
from easytask.scheduler import events
from easytask.scheduler.agentinfo import AgentInfo, going_online
from easytask.scheduler.batches import Gathered
from easytask.scheduler.heartbeats import Heartbeats
from easytask.scheduler.hello import BadHello, check_hello, stored_facts
from easytask.scheduler.hub import LiveHub
from easytask.store.audit import AuditNote
from easytask.store.db import Store
from easytask.store.identities import AgentChange, InvalidToken
from easytask.store.models import Agent, AgentState, utcnow
from easytask.transport.agentlink import AgentLink, Verdict

log = logging.getLogger("easytask.server")

PENDING_WINDOW = 600  # seconds over which an address may make `pending_max` new requests
REFUSAL_AUDIT_EVERY = 60.0  # seconds between audit events of one repeated refusal
MAX_REASON = 300  # characters of a refusal's reason kept (it may quote what the peer sent)


class AgentRegistry(Heartbeats):
    """Implements the link gate and tracks connected agents and their free slots (their
    heartbeats, busy state and ranking: `Heartbeats`)."""

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
        # pending requests one address may hold, and make per PENDING_WINDOW seconds
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

    # -- the gate ---------------------------------------------------------------------------

    def check_key(self, name: str | None, fingerprint: str, public_key: str, addr: str) -> Verdict:
        """A name is bound to the first key that claimed it until an admin decides: its key ->
        trusted (accepted) or probe (pending, hello only); another key -> refused, except on a
        revoked name, where the hello may carry an enrolment token (checked in `admit`)."""
        if name is None:
            self.refuse(None, fingerprint, addr, "peer is not an EasyTask agent")
            return "refuse"
        try:
            check_name(name)
        except BadName as exc:
            self.refuse(name, fingerprint, addr, str(exc))
            return "refuse"
        info = self.agents.get(name)
        if info is None:
            return "probe"
        if info.fingerprint != fingerprint:
            if info.state == AgentState.REVOKED:
                return "probe"
            self.refuse(name, fingerprint, addr, self._held(name, info))
            return "refuse"
        if info.state == AgentState.REVOKED:
            self.refuse(name, fingerprint, addr, "agent is revoked")
            return "refuse"
        return "trusted" if info.state == AgentState.ACCEPTED else "probe"

    @staticmethod
    def _held(name: str, info: AgentInfo) -> str:
        return f"name {name!r} is held by another key ({info.fingerprint}, {info.state})"

    def refuse(self, name: str | None, fingerprint: str, addr: str, reason: str) -> None:
        """Refuse a peer on the agent port: logged, listed (`refused`) and audited."""
        reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"
        log.warning("refused agent %s from %s (key %s): %s", name, addr, fingerprint, reason)
        self.refused.append(
            {
                "name": name,
                "fingerprint": fingerprint,
                "addr": addr,
                "reason": reason,
                "at": utcnow().isoformat(),
            }
        )
        del self.refused[:-100]
        # a peer retrying every second is audited once a minute per name, key, address and reason
        now = time.monotonic()
        key = (name, fingerprint, addr, reason)
        if now - self._audited.get(key, -REFUSAL_AUDIT_EVERY) < REFUSAL_AUDIT_EVERY:
            return
        self._audited = {k: t for k, t in self._audited.items() if now - t < REFUSAL_AUDIT_EVERY}
        self._audited[key] = now
        self._spawn(
            self.store.call(
                self.store.audit,
                name or "?",
                "agent.refused",
                f"agent {addr}",
                {"agent": name, "fingerprint": fingerprint, "reason": reason},
            )
        )

    async def admit(self, link: AgentLink, hello: dict[str, Any], trusted: bool) -> bool:
        """Admit a trusted agent, enrol one with a valid token, else record it as pending.

        One transaction per admission: a trusted agent's record goes online with its
        agent.online event (and agent.busy if its hello says so); an agent enrolled by a token
        has the token's use, its record, agent.enroll and agent.online in one."""
        assert link.name is not None
        name = link.name
        deletes = self._deletes.get(name, 0)

        def deleted() -> bool:
            """Whether a delete of this name began since the hello did (a delete wins)."""
            return self._deletes.get(name, 0) != deletes

        if not trusted:
            # enrolled or accepted on another server sharing the database since we loaded it
            await self.reload(name)
            known = self.agents.get(name)
            trusted = (
                known is not None
                and known.state == AgentState.ACCEPTED
                and known.fingerprint == link.fingerprint
            )
        try:
            fields: dict[str, Any] = {**check_hello(hello), "address": link.addr}
        except BadHello as exc:
            self.refuse(name, link.fingerprint, link.addr, f"bad hello: {exc}")
            return False
        if deleted():
            self._refuse_deleted(link)
            return False
        if not trusted:
            enrolled = await self._enrol(link, hello, fields, deleted)
            if enrolled is None:
                return False
            return await self._came_online(link, *enrolled)
        info = self.agents.get(name)
        if info is None or deleted():
            self._refuse_deleted(link)
            return False
        if info.link is not None and info.link is not link:
            info.link.close()  # the newest link of an agent wins
        online, notes, busy = going_online(link, self.server_id, fields, info)
        # an update, never an insert: a record deleted meanwhile stays deleted
        updated: Agent | None = await self._changes.put((name, notes, online))
        if updated is None or deleted():
            self._refuse_deleted(link)
            return False
        return await self._came_online(link, updated, busy)

    async def _came_online(self, link: AgentLink, row: Agent, busy: str) -> bool:
        """The agent's record is online (`row`, as stored): it takes work from now on."""
        assert link.name is not None
        name = link.name
        fresh = self._info(row, checked=True)
        info = self.agents.setdefault(name, fresh)
        info.slots, info.groups, info.facts = fresh.slots, fresh.groups, fresh.facts
        info.approved, info.busy = fresh.approved, busy
        info.link = link
        info.last_seen = time.monotonic()
        log.info(
            "agent %s online from %s (%s)",
            name,
            link.addr,
            link.conn.get_extra_info("send_cipher") or "?",
        )
        waiting = [g for g in info.groups if g not in info.approved]
        if waiting:
            log.info(
                "agent %s reports group label(s) not approved: %s (they place it in no group "
                "until `easytask agents approve %s --groups %s`, unless the inventory does)",
                name,
                ",".join(waiting),
                name,
                ",".join(waiting),
            )
        self._wake(name)
        self._publish(name)
        self._watch(link)
        for hook in self.on_online:
            hook(name)
        return True

    def _refuse_deleted(self, link: AgentLink) -> None:
        assert link.name is not None
        reason = (
            f"the record of {link.name!r} was deleted while it said hello "
            "(its next hello is a new request)"
        )
        self.refuse(link.name, link.fingerprint, link.addr, reason)

    async def _enrol(
        self,
        link: AgentLink,
        hello: dict[str, Any],
        fields: dict[str, Any],
        deleted: Callable[[], bool],
    ) -> tuple[Agent, str] | None:
        """An untrusted link's hello: a name with no record is enrolled by a valid token, else
        pending; a pending name waits for an admin's accept; a revoked name takes a new key only
        with a valid token, and then waits for an admin too (pending). Another key on a pending
        or accepted name, or a revoked key, is refused (and audited). Only a name with no
        record when the hello was read creates one; a record deleted since (`deleted`, or gone
        from the store) is not recreated: the link is refused.

        An agent enrolled by its token goes online in the same transaction: returns its
        record and whether it is busy (None: not admitted)."""
        name = link.name
        assert name is not None
        existing = self.agents.get(name)
        if existing is not None and existing.fingerprint != link.fingerprint:
            if existing.state != AgentState.REVOKED:
                self.refuse(name, link.fingerprint, link.addr, self._held(name, existing))
                return None
        elif existing is not None and existing.state == AgentState.REVOKED:
            self.refuse(name, link.fingerprint, link.addr, "agent is revoked")
            return None
        reenrol = existing is not None and existing.state == AgentState.REVOKED
        token = hello.get("enroll")
        if existing is None and not token and not await self._pending_allowed(link.addr):
            self.refuse(
                name,
                link.fingerprint,
                link.addr,
                f"too many pending requests from {link.addr} (at most {self.pending_max}, "
                f"and {self.pending_max} new ones per {PENDING_WINDOW // 60} minutes)",
            )
            return None
        if reenrol and not token:
            self.refuse(
                name,
                link.fingerprint,
                link.addr,
                "agent is revoked: a new key needs an enrolment token and an admin's accept",
            )
            return None
        # a token enrols a name with no record; a pending name waits for an admin, token or not
        spend = (existing is None or reenrol) and bool(token)
        enrolled = spend and existing is None
        state = AgentState.ACCEPTED if enrolled else AgentState.PENDING
        action = "agent.enroll" if enrolled else "agent.reenroll" if reenrol else "agent.pending"
        notes = []
        if existing is None or reenrol:  # a pending agent's reconnects are not new requests
            notes.append(
                AuditNote(
                    name,
                    action,
                    f"agent {link.addr}",
                    {"agent": name, "fingerprint": link.fingerprint},
                )
            )
        written, busy = fields, ""
        if enrolled:
            written, online_notes, busy = going_online(link, self.server_id, fields, None)
            notes += online_notes
        try:
            row = await self.store.call(
                self.store.register_agent,
                name,
                link.fingerprint,
                link.public_key,
                state,
                replace_revoked=reenrol,
                create=existing is None,
                token=token if spend else None,
                audit=notes,
                **written,
            )
        except InvalidToken:
            reason = (
                "agent is revoked: invalid token"
                if reenrol
                else "the enrolment token is unknown, spent or expired"
            )
            self.refuse(name, link.fingerprint, link.addr, reason)
            return None
        if row is not None and deleted():  # deleted after this write: the delete stands
            self._refuse_deleted(link)
            if enrolled:  # its record says online: it is not
                await self._mark_lost(name, link.addr, "refused: its record was deleted")
            return None
        if row is None:  # deleted, or another server bound the name to another key meanwhile
            await self.reload(name)
            held = self.agents.get(name)
            if held is None and existing is not None:
                self._refuse_deleted(link)
                return None
            if held is None:
                reason = f"name {name!r} is held by another key"
            elif held.fingerprint == link.fingerprint:
                reason = "agent is revoked"
            else:
                reason = self._held(name, held)
            self.refuse(name, link.fingerprint, link.addr, reason)
            return None
        self.agents[name] = self._info(row)
        if not enrolled and row.state == AgentState.ACCEPTED:  # accepted since the hello was read
            log.info("agent %s was accepted meanwhile: its next hello goes online", name)
            self._publish(name)
            return None
        if not enrolled:
            log.info(
                "agent %s (key %s) is pending: accept it with "
                "`easytask agents accept %s --fingerprint %s`",
                name,
                link.fingerprint,
                name,
                link.fingerprint,
            )
            self._publish(name)
            if reenrol:
                self._changed_here(name)
            return None
        log.info("agent %s enrolled by token (key %s)", name, link.fingerprint)
        self._changed_here(name)
        return row, busy

    async def _pending_allowed(self, addr: str) -> bool:
        """Whether `addr` may open one more pending request now (and count it if so)."""
        now = time.monotonic()
        recent = self._new_pending.setdefault(addr, deque())
        while recent and now - recent[0] > PENDING_WINDOW:
            recent.popleft()
        if len(recent) >= self.pending_max:
            return False
        if await self.store.call(self.store.count_pending, addr) >= self.pending_max:
            return False
        recent.append(now)
        for other in [a for a, times in self._new_pending.items() if not times]:
            del self._new_pending[other]
        return True

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
        await self._changes.put((name, note, {"connected": False, "last_seen": utcnow()}))
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
