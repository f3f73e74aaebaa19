"""Python's garbage collector paced for a server holding thousands of agent links.

A server's heap grows with its agents (hundreds of objects per link) to hundreds of thousands
of objects, and a fan-out leaves enough new ones behind to set off the collector's full pass,
which walks every object: 0.2-0.7 s at 300 agents a server, more at 1,000, during which the
server does nothing else (a viewer's live lines wait). So the objects that live on are frozen
out of those passes (`gc.freeze`): the process's own at start, and after each full pass Python
makes, what survived it. A full collection of everything (frozen objects too) runs only now and
then, preferably while no run is in flight here: garbage cycles among frozen objects are still
found, later, at a time nobody waits for the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("easytask.server")

QUIET_EVERY = 300.0  # seconds between full collections of everything, when nothing runs here
BUSY_EVERY = 1800.0  # ... at the latest, even while runs are in flight
CHECK = 1.0  # seconds between looks


class CollectorPacing:
    """Freezes the long-lived heap and collects all of it at quiet times (see the module)."""

    def __init__(
        self,
        busy: Callable[[], bool],
        quiet_every: float = QUIET_EVERY,
        busy_every: float = BUSY_EVERY,
        check: float = CHECK,
    ) -> None:
        self.busy = busy
        self.quiet_every = quiet_every
        self.busy_every = busy_every
        self.check = check
        self.collections = 0  # full collections of everything made here
        self.freezes = 0  # Python's own full passes whose survivors were frozen
        self._last = time.monotonic()
        self._passed = False  # Python made a full pass since the last look
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Freeze what the process built so far, and collect all of it now and then."""
        self.collect()
        gc.callbacks.append(self._on_gc)
        self._task = asyncio.create_task(self._loop(), name="gc-pacing")

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # any thread; frozen at the next look, outside the collector
        if phase == "stop" and info.get("generation") == 2:
            self._passed = True

    def collect(self) -> float:
        """One full collection of everything, then freeze the survivors; its seconds."""
        began = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        took = time.perf_counter() - began
        self._last = time.monotonic()
        self.collections += 1
        log.debug("full garbage collection: %d found, %.0f ms", found, took * 1000)
        return took

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.check)
            since = time.monotonic() - self._last
            if since >= self.busy_every or (since >= self.quiet_every and not self.busy()):
                self.collect()
            elif self._passed:  # its survivors are walked by no further pass until then
                gc.freeze()
                self.freezes += 1
            self._passed = False

    async def close(self) -> None:
        """Stop; the collector runs as Python's default again."""
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        gc.unfreeze()
