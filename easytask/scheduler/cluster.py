"""Several servers on one PostgreSQL database: heartbeats, hand-offs, take-overs, shared live view.

- Each server writes a heartbeat row (`server_node`) every `beat` seconds. A server whose
  heartbeat is older than `dead_after` seconds (or that stopped and said so) is dead: the first
  live server to lock its row takes its unfinished jobs and offers the runs it was executing to
  whichever server now holds their agents, which re-attach to the commands the agents kept.
- A run whose agent is held by another live server is offered (`run.server = OFFERED`); the
  server holding the agent claims it with a row lock and executes it; the job's own server
  follows it to its end (its forks limit, playbook flow and job result stay there).
- `LISTEN/NOTIFY` on one channel carries what other servers need to know at once: offers, kill
  requests, run and job state changes for their viewers, agents whose state changed, and the
  line ranges just stored, which a server whose viewers watch that run reads from the database
  and publishes to them (`clusternotices.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.batches import Batched
from easytask.scheduler.clusternotices import Notices, RunControl
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.inflight import KillSwitch, first_set
from easytask.scheduler.logwriter import LogWriter
from easytask.store import servers as rows
from easytask.store.db import Store
from easytask.store.models import OFFERED, Run, RunState

log = logging.getLogger("easytask.server")

HOLDERS_FOR = 0.5  # seconds the map of which server holds which agent is reused


class Cluster(Notices):
    """This server's part in a group of servers sharing one PostgreSQL database (its notices to
    and from the others in `Notices`)."""

    def __init__(
        self,
        store: Store,
        engine: RunControl,
        registry: AgentRegistry,
        hub: LiveHub,
        node: str,
        *,
        beat: float = 2.0,
        dead_after: float = 15.0,
    ) -> None:
        self.store = store
        self.engine = engine
        self.registry = registry
        self.hub = hub
        self.node = node
        self.beat = beat
        self.dead_after = dead_after
        self.on_take_over: list[Callable[[str, list[int]], Awaitable[None]]] = []
        self.on_fenced: list[Callable[[], None]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._claim_wake = asyncio.Event()
        # the next claim looks for the runs of every agent online here (offers were made), or
        # only of those that came online since the last (a fleet reconnecting: not all each time)
        self._claim_every = True
        self._claim_fresh: set[str] = set()
        self._changed: dict[int, KillSwitch] = {}  # runs followed here, woken on changes
        self._seen: dict[int, tuple[str, str]] = {}  # their (state, server) at the last look
        self._holders: dict[str, str] = {}
        self._holders_at = -1e9
        self._holders_lock = asyncio.Lock()
        self._offer_queued = False
        self._listening = asyncio.Event()
        # this server's log writer: state events wait for the lines stored before them
        self.writer: LogWriter | None = None
        self._deferred: deque[tuple[int, dict[str, Any], list[str]]] = deque()
        # a fan-out's runs are handed over, and read back by their followers, in batches
        self._offers = Batched(self._offer_many, False)
        self._reads: Batched[int, Run | None] = Batched(self._read_many, None)
        # agents another server changed, read again together, the listener not waiting for it
        self._stale: set[str] = set()
        self._reloader: asyncio.Task[None] | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, url: str, agents: str, process: str) -> None:
        """Join: heartbeat row, offer back runs claimed before a restart, start listening."""
        await self.store.call(
            rows.heartbeat,
            self.store,
            self.node,
            first=True,
            url=url,
            agents=agents,
            process=process,
        )
        self.store.fence_node = self.node
        back = await self.store.call(rows.orphaned_claims, self.store, self.node)
        if back:
            log.warning(
                "%d run(s) this server had claimed for other servers are offered again", back
            )
        self._tasks = [
            asyncio.create_task(self._listen(), name="cluster-listen"),
            asyncio.create_task(self._send(), name="cluster-send"),
            asyncio.create_task(self._heartbeats(), name="cluster-heartbeat"),
            asyncio.create_task(self._claims(), name="cluster-claims"),
            asyncio.create_task(self._watch_followed(), name="cluster-follow"),
        ]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await self._listening.wait()
        if back:
            self.notify("offer")

    def stop_claiming(self) -> None:
        """This server is stopping: it takes no more runs from the others."""
        for task in self._tasks:
            if task.get_name() == "cluster-claims":
                task.cancel()

    async def close(self) -> None:
        """Leave: mark the heartbeat old so another server takes what is left at once."""
        for task in self._tasks:
            task.cancel()
        self._offers.cancel()
        self._reads.cancel()
        if self._reloader is not None:
            self._reloader.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.store.call(rows.leave, self.store, self.node)
        except Exception as exc:
            log.warning("could not record this server's stop: %s", exc)

    # -- heartbeats and take-overs ----------------------------------------------------------

    async def _heartbeats(self) -> None:
        # After this server's own heartbeats failed (the database was away), every server's
        # heartbeat is as old as the outage: no take-over until the others have had the time
        # to beat again, or a database restart would make the servers stop each other.
        quiet_until = 0.0
        missed = False
        while True:
            await asyncio.sleep(self.beat)
            try:
                # its own thread, not the database thread's queue: a fan-out queueing seconds of
                # work there must not make this server look dead to the others (who would take
                # its work over and stop it)
                ok = await asyncio.to_thread(rows.heartbeat, self.store, self.node)
            except Exception as exc:
                log.warning("heartbeat not recorded: %s", exc)
                missed = True
                continue
            if missed:
                missed = False
                quiet_until = time.monotonic() + self.dead_after + 2 * self.beat
                log.info(
                    "heartbeat recorded again; no take-over of other servers for %.0f s",
                    quiet_until - time.monotonic(),
                )
            if not ok:
                log.error(
                    "this server was presumed dead (no heartbeat for %gs) and its work was taken "
                    "over by another server; stopping",
                    self.dead_after,
                )
                for fenced in self.on_fenced:
                    fenced()
                return
            if quiet_until and time.monotonic() < quiet_until:
                continue
            try:
                # its own thread too (its own transaction): the next heartbeat waits for it
                taken = await asyncio.to_thread(
                    rows.take_over, self.store, self.node, self.dead_after
                )
            except Exception as exc:
                log.warning("could not check for stopped servers: %s", exc)
                continue
            if quiet_until:
                quiet_until = 0.0
                log.info(
                    "checked for stopped servers again after the database outage: %d found",
                    len(taken),
                )
            for t in taken:
                log.warning(
                    "server %s stopped: took over %d job(s); %d of its %d run(s) in flight are "
                    "offered to the servers holding their agents",
                    t.server,
                    len(t.jobs),
                    t.offered,
                    t.runs,
                )
                if t.jobs:
                    for hook in self.on_take_over:
                        await hook(t.server, t.jobs)
                if t.offered:
                    self.notify("offer")
                    self._claim_all()

    # -- hand-offs --------------------------------------------------------------------------

    async def holder(self, agent: str) -> str | None:
        """The other live server holding the agent's link, if any (a map read at most every
        HOLDERS_FOR seconds serves every run: a fan-out asks once, not once per host)."""
        async with self._holders_lock:
            if time.monotonic() - self._holders_at > HOLDERS_FOR:
                self._holders = await self.store.call(rows.holders, self.store, self.dead_after)
                self._holders_at = time.monotonic()
        held = self._holders.get(agent)
        return held if held != self.node else None

    async def live_servers(self) -> set[str]:
        """Ids of the servers whose heartbeat is recent, this one included."""
        found = await self.store.call(rows.nodes, self.store)
        return {n.id for n in found if rows.alive(n, self.dead_after)} | {self.node}

    async def offer(self, run: Run) -> bool:
        """Hand the run to the server that holds its agent (with the other runs offered
        meanwhile: one statement, one notice)."""
        assert run.id is not None
        if not await self._offers.get(run.id):
            return False
        run.server = OFFERED
        self.notify("offer")
        return True

    async def _offer_many(self, run_ids: list[int]) -> dict[int, bool]:
        done = await self.store.call(rows.offer_many, self.store, run_ids, self.node)
        return {run_id: True for run_id in done}

    async def _read_many(self, run_ids: list[int]) -> dict[int, Run | None]:
        return dict(await self.store.call(rows.runs, self.store, run_ids))

    def agent_online(self, name: str) -> None:
        """An agent connected here: it may have runs waiting on offer."""
        self._claim_fresh.add(name)
        self._claim_wake.set()

    def _claim_all(self) -> None:
        """Runs were offered: the next claim looks at every agent online here."""
        self._claim_every = True
        self._claim_wake.set()

    async def _claims(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.beat):
                    await self._claim_wake.wait()
            except TimeoutError:
                self._claim_every = True  # every beat: whatever a missed notice offered
            self._claim_wake.clear()
            every, fresh = self._claim_every, self._claim_fresh
            self._claim_every, self._claim_fresh = False, set()
            agents = self.registry.agents
            names = agents if every else fresh
            online = [name for name in names if (info := agents.get(name)) and info.online]
            if not online:
                continue
            try:
                claimed, details = await self.store.call(rows.claim, self.store, online, self.node)
            except Exception as exc:
                log.warning("could not claim offered runs: %s", exc)
                self._claim_every = True
                continue
            for run in claimed:
                log.info("run %s on %s: claimed (its agent is held here)", run.id, run.host)
            if claimed:
                self.engine.execute_claimed(claimed, details)
            if len(claimed) >= 500:
                self._claim_all()

    def expect(self, run_ids: list[int]) -> None:
        """Runs offered from their job's start: their ends wake `follow` even when told before
        it is called."""
        for run_id in run_ids:
            self._changed.setdefault(run_id, KillSwitch())

    def forget(self, run_id: int) -> None:
        """The run is no longer followed here."""
        self._changed.pop(run_id, None)
        self._seen.pop(run_id, None)

    async def follow(self, run: Run, kill: KillSwitch, give_back_at: float | None) -> bool:
        """Wait for a run another server executes: True once it ended (fields copied into `run`),
        False when it is this server's to execute (it came back, unclaimed or taken over)."""
        assert run.id is not None
        asked_kill = False
        changed = self._changed.setdefault(run.id, KillSwitch())
        try:
            while True:
                if not changed.is_set() and (asked_kill or not kill.is_set()):
                    await (first_set(changed) if asked_kill else first_set(changed, kill))
                changed.clear()
                row = await self._reads.get(run.id)  # with the other runs woken meanwhile
                if row is None:
                    return True
                for name in Run.model_fields:  # most fields are as they were: set the others
                    value = getattr(row, name)
                    if getattr(run, name) != value:
                        setattr(run, name, value)
                if row.state in RunState.FINAL:
                    return True
                if self.engine.executes_here(row):
                    return False
                if kill.is_set() and not asked_kill:
                    asked_kill = True
                    self.notify("kill", run=run.id, by=self.engine.killed_by(run.id))
                late = give_back_at is not None and time.monotonic() >= give_back_at
                if (
                    row.server == OFFERED
                    and (kill.is_set() or late)
                    and await self.store.call(rows.retract, self.store, run.id, self.node)
                ):
                    run.server = self.node
                    return False
        finally:
            self._changed.pop(run.id, None)
            self._seen.pop(run.id, None)

    async def _watch_followed(self) -> None:
        """Every beat, one query for every run followed here: wake those that ended or moved
        (and offered ones, whose followers may take them back)."""
        while True:
            await asyncio.sleep(self.beat)
            ids = list(self._changed)
            if not ids:
                continue
            try:
                found = await self.store.call(rows.states, self.store, ids)
            except Exception as exc:
                log.warning("could not read the runs other servers execute: %s", exc)
                continue
            for run_id, state, server in found:
                if run_id not in self._changed:
                    continue
                now = (state, server)
                # a follower acts on a run that ended, is on offer, or came back to this
                # server; a run another server executes (dispatched, running) needs no look
                back = server in ("", self.node) and self._seen.get(run_id) != now
                if state in RunState.FINAL or server == OFFERED or back:
                    self._seen[run_id] = now
                    self._wake(run_id)

    def _wake(self, run_id: int) -> None:
        changed = self._changed.get(run_id)
        if changed is not None:
            changed.set()
