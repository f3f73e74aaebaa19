"""Waiting for a run's agent: a slot on it, or a hand-over to the server that holds it."""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

from easytask.errors import EasyTaskError
from easytask.plan.become import resolve_become
from easytask.scheduler.agents import AgentInfo, AgentRegistry
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.inflight import JobOptions, LiveRun, masks
from easytask.scheduler.recording import Recorder
from easytask.store.models import OFFERED, Run, RunState
from easytask.store.runs import BECOME


class Handed(enum.Enum):
    """wait_agent's answer when the run was handed to the server that holds its agent."""

    OFFER = "offer"


OFFER = Handed.OFFER
Slot = AgentInfo | Literal[Handed.OFFER] | None  # a slot taken, the run handed over, or neither


class Dispatcher:
    """Takes slots on agents for runs; offers a run to another server when that one holds its
    agent."""

    def __init__(self, registry: AgentRegistry, recorder: Recorder) -> None:
        self.registry = registry
        self.recorder = recorder
        self.cluster: Cluster | None = None

    async def offers_at_submit(
        self, runs: list[Run], targets: Mapping[str, Mapping[str, Any]], options: JobOptions
    ) -> dict[int, list[tuple[str, str]]]:
        """Mark the runs of a new job whose agents another live server holds as on offer from
        the start (stored so with the job: one statement and one notice for them all, no
        hand-over per run once the job runs); returns their timeline events by position.

        Not for a job with a forks limit (its runs wait here for a slot first), with masked
        values (executed where they are known), moving files, or no pending time (its runs
        are never handed over: see Execution._agent_run_here)."""
        cluster = self.cluster
        if (
            cluster is None
            or options.forks > 0
            or options.file_action is not None
            or options.pending_timeout <= 0
            or masks(options)
        ):
            return {}
        notes: dict[int, list[tuple[str, str]]] = {}
        for i, run in enumerate(runs):
            info = self.registry.agents.get(run.host)
            if run.connection != "agent" or (info is not None and info.online):
                continue
            holder = await cluster.holder(run.host)
            if holder is None:
                continue
            said: list[tuple[str, str]] = []
            try:
                as_user = resolve_become(run.host, targets.get(run.host, {}), options.become)
            except EasyTaskError:  # bad become variables: the run says so when it runs
                continue
            if as_user is not None:  # whom the claiming server asks for (see Execution.run)
                said.append((BECOME, as_user.user))
            said.append(("handed over", f"agent {run.host} is held by {holder}"))
            run.server = OFFERED
            notes[i] = said
        return notes

    async def wait_agent(
        self,
        run: Run,
        live: LiveRun,
        timeout: float,
        started: bool,
        *,
        offer: Callable[[], Awaitable[None]] | None = None,
        said: float | None = None,
    ) -> Slot:
        """Take a slot on the run's agent, waiting up to `timeout` for it to be online; with
        `offer`, hand the run over (returns OFFER) if another server holds the agent."""
        said = timeout if said is None else said
        fresh = not started  # new work waits while the agent is busy; a re-attach does not
        if started or not live.kill.is_set():
            free = self.registry.try_acquire(run.host, fresh)  # the usual case: a slot free
            if free is not None:
                return free
        info = self.registry.agents.get(run.host)
        if info is None or not info.online:
            if offer is not None and not live.kill.is_set() and await self.try_offer(run, offer):
                return OFFER
            await self.recorder.event(
                run, "waiting", f"agent {run.host} not connected; waiting up to {said:g}s"
            )
        elif fresh and info.busy:
            await self.recorder.event(
                run, "waiting", f"agent {run.host} is busy ({info.busy}); waiting up to {said:g}s"
            )
        acquire = asyncio.create_task(self.acquire(run, timeout, offer, fresh))
        killed = asyncio.create_task(live.kill.wait())
        try:
            wait_set = {acquire} if started else {acquire, killed}
            await asyncio.wait(wait_set, return_when=asyncio.FIRST_COMPLETED)
        finally:
            killed.cancel()
        if live.kill.is_set() and not started:
            if acquire.done() and acquire.result() not in (None, OFFER):
                await self.registry.release(run.host)
            else:
                acquire.cancel()
            await self.recorder.finish(
                run, RunState.TERMINATED, reason=f"killed by {live.killed_by} before it started"
            )
            return None
        got = acquire.result()
        if got is None and not started:
            info = self.registry.agents.get(run.host)
            if info is not None and info.online and info.busy:
                reason = f"agent {run.host} stayed busy ({info.busy}) for {said:g}s"
            else:
                reason = f"agent {run.host} did not connect within {said:g}s"
            await self.recorder.finish(run, RunState.UNREACHABLE, reason=reason)
        return got

    async def try_offer(self, run: Run, prepare: Callable[[], Awaitable[None]]) -> bool:
        """Hand the run to another live server if that one holds its agent (and say so)."""
        info = self.registry.agents.get(run.host)
        if self.cluster is None or (info is not None and info.online):
            return False
        holder = await self.cluster.holder(run.host)
        if holder is None:
            return False
        await prepare()
        if not await self.cluster.offer(run):
            return False
        await self.recorder.event(run, "handed over", f"agent {run.host} is held by {holder}")
        return True

    async def acquire(
        self,
        run: Run,
        timeout: float,
        offer: Callable[[], Awaitable[None]] | None,
        fresh: bool = True,
    ) -> Slot:
        """A slot on the run's agent (not busy, for `fresh` work); OFFER once the run went to
        the server holding the agent."""
        cluster = self.cluster
        if offer is None or cluster is None:
            return await self.registry.acquire(run.host, timeout, fresh)
        end = time.monotonic() + timeout
        while True:
            if await self.try_offer(run, offer):
                return OFFER
            slice_ = min(max(end - time.monotonic(), 0.0), cluster.beat)
            got = await self.registry.acquire(run.host, slice_, fresh)
            if got is not None or time.monotonic() >= end:
                return got
