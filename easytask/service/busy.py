"""Busy agents: the server's limits for each agent, read from the inventory and kept current.

An agent's host (or one of its groups, or `all`) may set `easytask_max_load` (load per CPU) and
`easytask_min_free_memory` (e.g. 256M); with the agent's own `--max-load`/`--min-free-memory`,
the tighter wins (see easytask.headroom). The registry judges each heartbeat against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection

from easytask.headroom import LIMIT_VARS, Limits, limits_from_vars
from easytask.inventory.load import Inventory
from easytask.service.context import Services
from easytask.store.models import AgentState

log = logging.getLogger("easytask.server")

REFRESH_EVERY = 10.0  # seconds between readings of the inventory's limits
MAX_PAUSE = 300.0  # seconds between readings while the inventory fails to load
# A reading walks every agent: while a fleet comes online (a reconnect storm wakes it for each
# agent), readings may take at most this share of the time; a small fleet's take milliseconds.
WAKE_SHARE = 0.1


class LimitsWatch:
    """Reads the inventory's limits for the accepted agents every `every` seconds, and at
    once when an agent comes online (`wake`), and gives them to the registry.

    The cost does not grow with the fleet at each reading: an agent's limits are read again
    only when the inventory changed (a new load) or the groups its approved labels place it in
    changed; an agent coming online has only its own read (10,000 agents coming online one
    after another would otherwise read the whole fleet's 10,000 times)."""

    def __init__(self, services: Services, every: float = REFRESH_EVERY) -> None:
        self.services = services
        self.every = every
        self._wake = asyncio.Event()
        self._woken: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()
        self._base: Inventory | None = None  # the inventory the limits below were read from
        self._read_as: dict[str, list[str]] = {}  # agent -> its groups when its limits were read
        self._found: dict[str, Limits] = {}  # agent -> the limits read (none: not named)
        self.reads = 0  # agents whose limits were read, since the start

    def start(self) -> None:
        """Start reading (a named task, stopped by `close`)."""
        self._task = asyncio.create_task(self._loop(), name="agent-limits")

    def wake(self, name: str | None = None) -> None:
        """Read again now (an agent came online: its own limits; None: everyone's)."""
        self._woken.add(name or "")
        self._wake.set()

    async def _loop(self) -> None:
        pause = self.every
        whole = True
        while True:
            self._wake.clear()
            woken, self._woken = self._woken, set()
            started = time.monotonic()
            try:
                await self.refresh(None if whole or "" in woken else woken)
                pause = self.every
            except Exception as exc:  # tried again later, less often while it keeps failing
                log.warning("agent limits not read from the inventory: %s", exc)
                pause = min(pause * 2, MAX_PAUSE)
                self._base = None  # everyone's again next time
            whole = True
            rest = min(self.rest_after(time.monotonic() - started), pause)
            await asyncio.sleep(rest)  # a wake meanwhile is kept for after
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause - rest):
                    await self._wake.wait()
                    whole = False

    @staticmethod
    def rest_after(took: float) -> float:
        """Seconds before the next reading after one that took `took` s: readings use at most
        WAKE_SHARE of the time, however often agents come online."""
        return took * (1 / WAKE_SHARE - 1)

    async def refresh(self, only: Collection[str] | None = None) -> dict[str, Limits]:
        """The limits the inventory sets now for each accepted agent (`only`: those of these
        names), given to the registry; returns those that set any."""
        registry = self.services.registry
        accepted = (
            registry.agents
            if only is None
            else {n: registry.agents[n] for n in only if n in registry.agents}
        )
        declared = {n: i.member_of for n, i in accepted.items() if i.state == AgentState.ACCEPTED}
        limits, whole = await asyncio.to_thread(self._read, declared, only is None)
        if not whole:  # the inventory changed: everyone's limits are read again
            return await self.refresh()
        registry.set_limits(limits, None if only is None else list(accepted))
        return limits

    def _read(self, declared: dict[str, list[str]], whole: bool) -> tuple[dict[str, Limits], bool]:
        # the inventory files as they are now; a dynamic inventory's last output (only jobs
        # run its script again)
        inventory = self.services.inventory.now(rerun_scripts=False)
        if inventory is not self._base:
            if not whole:
                return {}, False
            self._base, self._read_as, self._found = inventory, {}, {}
        if whole:  # agents no longer accepted are forgotten
            for gone in [n for n in self._read_as if n not in declared]:
                del self._read_as[gone]
                self._found.pop(gone, None)
        changed = {n: g for n, g in declared.items() if self._read_as.get(n) != g}
        if changed:
            merged = inventory.with_extra_hosts(changed)
            for name, groups in changed.items():
                self._read_as[name] = list(groups)
                self._found.pop(name, None)
                found = self._limits_of(merged, name)
                if found is not None:
                    self._found[name] = found
            self.reads += len(changed)
        return {n: self._found[n] for n in declared if n in self._found}, True

    def _limits_of(self, inventory: Inventory, name: str) -> Limits | None:
        if name not in inventory.hosts:
            return None
        hostvars = inventory.host_vars(name)
        if not any(var in hostvars for var in LIMIT_VARS):
            return None
        found = Limits()
        for var in LIMIT_VARS:  # a bad value drops that limit only
            try:
                found = found.tighter(limits_from_vars({var: hostvars.get(var)}, name))
            except ValueError as exc:
                if str(exc) not in self._warned:  # once, not every refresh
                    self._warned.add(str(exc))
                    log.warning("inventory: %s (that limit is not applied)", exc)
        return found

    async def close(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
