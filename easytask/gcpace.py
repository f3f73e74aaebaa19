"""The cyclic garbage collector paced for a process that holds many long-lived objects.

CPython's full collection scans every object the collector tracks. A server with thousands of
agent links holds millions that live as long as their link (each link's SSH connection, its
channels, keys, buffers), and a fan-out allocates enough to start a full collection every few
hundred runs: at 1,000 agents a fan-out cost about 0.5 s of full collections, at 10,000 ten
times that per collection, a cost per run that grows with the fleet.

`Pacer.step`, called every few seconds (`STEP_EVERY`), moves what survived until then out of the automatic
collections' sight (`gc.freeze`): they scan only what came since. Objects that die are still
freed at once by their reference counts; only garbage in reference cycles among the frozen
waits, until the next sweep: every `sweep_every` seconds, or sooner once the process holds a
quarter more memory blocks than after the last sweep (a fan-out's runs, frozen while in flight,
would otherwise hold their memory until then), the frozen objects are given back
(`gc.unfreeze`) for one full collection before the next freeze. The blocks are counted, not the
frozen objects: counting those walks every one of them (a quarter of a second at 10,000 agents,
at every step), where `sys.getallocatedblocks` reads the allocator's pools. A sweep walks every object (hundreds of ms with
thousands of links, the process doing nothing else): one that growth calls for waits for a step
where `busy()` says no run is in flight, unless `sweep_every` has passed.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

STEP_EVERY = 10.0  # seconds between steps (what survived is frozen: a freeze costs nothing)
SWEEP_EVERY = 900.0  # seconds between full collections of everything, at most
SWEEP_GROWTH = 1.25  # ... or once the memory blocks grew by this factor since the last one


class Pacer:
    """Freezes what survived at each step; a full collection every `sweep_every` seconds at most,
    sooner when memory grew and nothing is busy."""

    def __init__(
        self,
        sweep_every: float = SWEEP_EVERY,
        clock: Callable[[], float] = time.monotonic,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self.sweep_every = sweep_every
        self.busy = busy
        self.clock = clock
        self.swept = clock()
        self.sweeps = 0
        self.kept = 0  # objects frozen right after the last sweep (0: none yet)

    def step(self) -> None:
        """Freeze what is tracked now; first, when a sweep is due, collect everything."""
        now = self.clock()
        grown = self.kept > 0 and sys.getallocatedblocks() > SWEEP_GROWTH * self.kept
        if (grown and not self.busy()) or now - self.swept >= self.sweep_every:
            gc.unfreeze()
            gc.collect()
            self.swept = now
            self.sweeps += 1
            self.kept = 0
        gc.freeze()
        if not self.kept:
            self.kept = sys.getallocatedblocks()
