"""The link gate: which peers on the agent port are trusted, enrolled, pending or refused.

A name is bound to the first key that claimed it until an admin decides. `check_key` judges a
peer's key before its hello; `admit` judges the hello: a trusted agent goes online, a token
enrols a new one, anything else waits for an admin as pending or is refused, each refusal
logged, listed and audited (mixed into `AgentRegistry`, which keeps the records).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from easytask.names import BadName, check_name
from easytask.scheduler.agentinfo import AgentInfo, RegistryPart, going_online
from easytask.scheduler.batches import Gathered
from easytask.scheduler.hello import BadHello, check_hello
from easytask.store.audit import AuditNote
from easytask.store.identities import AgentChange, InvalidToken
from easytask.store.models import Agent, AgentState, utcnow
from easytask.transport.agentlink import AgentLink, Verdict

log = logging.getLogger("easytask.server")

PENDING_WINDOW = 600  # seconds over which an address may make `pending_max` new requests
REFUSAL_AUDIT_EVERY = 60.0  # seconds between audit events of one repeated refusal
MAX_REASON = 300  # characters of a refusal's reason kept (it may quote what the peer sent)


class Gate(RegistryPart):
    """Judges keys and hellos on the agent port (mixed into `AgentRegistry`)."""

    server_id: str
    refused: list[dict[str, Any]]
    pending_max: int
    on_online: list[Callable[[str], None]]
    _new_pending: dict[str, deque[float]]
    _audited: dict[tuple[str | None, str, str, str], float]
    _deletes: dict[str, int]
    _changes: Gathered[AgentChange, Agent | None]
    _watch: Callable[[AgentLink], None]  # the registry's heartbeats

    def _changed_here(self, name: str) -> None:
        raise NotImplementedError

    async def reload(self, name: str) -> None:
        raise NotImplementedError

    async def _mark_lost(self, name: str, addr: str, reason: str) -> None:
        raise NotImplementedError

    @staticmethod
    def _info(row: Agent, checked: bool = False) -> AgentInfo:
        raise NotImplementedError

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
