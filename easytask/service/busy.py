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

from easytask.headroom import LIMIT_VARS, Limits, limits_from_vars
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
    once when an agent comes online (`wake`), and gives them to the registry."""

    def __init__(self, services: Services, every: float = REFRESH_EVERY) -> None:
        self.services = services
        self.every = every
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._warned: set[str] = set()

    def start(self) -> None:
        """Start reading (a named task, stopped by `close`)."""
        self._task = asyncio.create_task(self._loop(), name="agent-limits")

    def wake(self) -> None:
        """Read again now (an agent came online)."""
        self._wake.set()

    async def _loop(self) -> None:
        pause = self.every
        while True:
            self._wake.clear()
            started = time.monotonic()
            try:
                await self.refresh()
                pause = self.every
            except Exception as exc:  # tried again later, less often while it keeps failing
                log.warning("agent limits not read from the inventory: %s", exc)
                pause = min(pause * 2, MAX_PAUSE)
            rest = min(self.rest_after(time.monotonic() - started), pause)
            await asyncio.sleep(rest)  # a wake meanwhile is kept for after
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause - rest):
                    await self._wake.wait()

    @staticmethod
    def rest_after(took: float) -> float:
        """Seconds before the next reading after one that took `took` s: readings use at most
        WAKE_SHARE of the time, however often agents come online."""
        return took * (1 / WAKE_SHARE - 1)

    async def refresh(self) -> dict[str, Limits]:
        """The limits the inventory sets now for each accepted agent, given to the registry."""
        registry = self.services.registry
        names = [n for n, i in registry.agents.items() if i.state == AgentState.ACCEPTED]
        limits = await asyncio.to_thread(self._read, registry.declared_hosts(), names)
        registry.set_limits(limits)
        return limits

    def _read(self, declared: dict[str, list[str]], names: list[str]) -> dict[str, Limits]:
        # the inventory files as they are now; a dynamic inventory's last output (only jobs
        # run its script again)
        inventory = self.services.inventory.now(rerun_scripts=False).with_extra_hosts(declared)
        out: dict[str, Limits] = {}
        for name in names:
            if name not in inventory.hosts:
                continue
            hostvars = inventory.host_vars(name)
            if not any(var in hostvars for var in LIMIT_VARS):
                continue
            found = Limits()
            for var in LIMIT_VARS:  # a bad value drops that limit only
                try:
                    found = found.tighter(limits_from_vars({var: hostvars.get(var)}, name))
                except ValueError as exc:
                    if str(exc) not in self._warned:  # once, not every refresh
                        self._warned.add(str(exc))
                        log.warning("inventory: %s (that limit is not applied)", exc)
            out[name] = found
        return out

    async def close(self) -> None:
        """Stop reading."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
