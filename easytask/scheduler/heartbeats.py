"""Heartbeats and busy agents: the registry's half that judges each agent's headroom.

After admitting an agent the registry asks it for heartbeats (`_watch`); each one updates its
facts and is judged against the tighter of its own and the inventory's limits (`_rejudge`).
Only a change between busy and not busy is logged, stored, audited and published.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

from easytask.headroom import Limits, rank
from easytask.scheduler.agentinfo import AgentInfo, RegistryPart, busy_note
from easytask.scheduler.hello import BadHello, check_beat
from easytask.store.models import utcnow
from easytask.transport.agentlink import AgentLink

log = logging.getLogger("easytask.server")

# The heartbeats a server asks its whole fleet for, at most, per second: each costs the server a
# packet, a parse and a judgement, so 10,000 agents at the agents' own 5 s pace would keep a
# fifth of a core busy. Past BEATS_PER_SECOND * 5 agents each is asked to beat more slowly.
BEATS_PER_SECOND = 200.0
# a link's keepalives (when the pace asked is slow) come no sooner than this many paces after
# the last data received: never while heartbeats come (a small fleet keeps --keepalive)
KEEPALIVE_PER_PACE = 1.5
REPACE_FROM = 5.0  # seconds: the agents' own default pace; below it no one is asked again


def beat_pace(agents: int) -> float:
    """Seconds between one agent's heartbeats so that `agents` agents send at most
    BEATS_PER_SECOND in all (an agent never beats faster than its own --heartbeat)."""
    return round(agents / BEATS_PER_SECOND, 1)


class Heartbeats(RegistryPart):
    """Heartbeats, limits and the choice among agents (mixed into `AgentRegistry`)."""

    _paced = REPACE_FROM  # the pace every link was last asked for, once the fleet outgrew 5 s

    def _watch(self, link: AgentLink) -> None:
        """Ask the agent for heartbeats on its control session; each one is judged."""
        link.control.on_push = lambda message: self._beat(link, message)
        pace = beat_pace(len(self.agents))
        if pace >= 2 * self._paced:  # the fleet doubled: the links up already are asked again
            self._paced = pace  # each at its next heartbeat (spread as they come, not at once)
        link.beats_every = pace
        self._spawn(self._subscribe(link, pace))

    async def _subscribe(self, link: AgentLink, pace: float) -> None:
        try:
            first = await link.request("beats", every=pace)
        except Exception as exc:  # an older agent: its hello's figures stay
            log.info("agent %s sends no heartbeats: %s", link.name, exc or type(exc).__name__)
            return
        # a heartbeat shows the link alive: no keepalive while they come at the pace asked
        link.keepalive_at_least(KEEPALIVE_PER_PACE * pace)
        self._beat(link, first)

    def _beat(self, link: AgentLink, message: dict[str, Any]) -> None:
        """A heartbeat: the agent's load, memory and free slots now."""
        info = self.agents.get(link.name or "")
        if info is None or info.link is not link or "beat" not in message:
            return
        try:
            fields = check_beat(message["beat"])
        except BadHello as exc:
            log.warning("agent %s: heartbeat ignored: %s", info.name, exc)
            return
        info.facts.update(fields)
        info.last_seen = time.monotonic()
        self._rejudge(info)
        if self._paced > REPACE_FROM and link.beats_every < self._paced:
            # asked before the fleet doubled: slower now
            link.beats_every = self._paced
            self._spawn(self._subscribe(link, self._paced))

    def set_limits(self, limits: dict[str, Limits], only: Sequence[str] | None = None) -> None:
        """The server's limits per agent (from the inventory); an agent not named has none
        (`only`: these agents' limits, the others' stay)."""
        for name in list(self.agents) if only is None else only:
            info = self.agents.get(name)
            if info is None:
                continue
            new = limits.get(name, Limits())
            if new != info.limits:
                info.limits = new
                self._rejudge(info)

    def _rejudge(self, info: AgentInfo) -> None:
        """Judge a connected agent again; a change is logged, stored, audited and published."""
        if not info.online:
            return
        busy = info.judge()
        was, info.busy = info.busy, busy
        info.facts["busy"] = busy
        if bool(busy) == bool(was):  # the reason's figures change with every heartbeat
            return
        if busy:
            log.warning("agent %s is busy: %s (it gets no new work)", info.name, busy)
        else:
            log.info("agent %s is no longer busy (was: %s)", info.name, was)
        addr = info.link.addr if info.link is not None else ""
        note = busy_note(info.name, addr, busy, was)
        # stored with its audit event; its status (busy or online) holds since now
        facts = json.dumps(info.facts)
        since = utcnow()
        self._spawn(
            self.store.call(
                self.store.update_agent, info.name, note, facts=facts, state_since=since
            )
        )
        self._publish(info.name)
        if not busy:
            self._wake(info.name)  # runs waiting for it take it now

    def least_busy(self, candidates: Sequence[str]) -> str:
        """The online agent, not busy, with the most headroom (`easytask.headroom.rank`: free
        slots, then load per CPU, then available memory; ties in the order given); the first
        candidate when none is online and free of work limits (its run then waits for it)."""
        ready = []
        for name in candidates:
            info = self.agents.get(name)
            if info is not None and info.online and not info.busy:
                ready.append((name, info.headroom))
        ranked = rank(ready)
        return ranked[0] if ranked else candidates[0]
