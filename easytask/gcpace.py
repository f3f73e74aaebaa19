"""The cyclic garbage collector paced for a process that holds many long-lived objects.

CPython's full collection scans every object the collector tracks. A server with thousands of
agent links holds millions that live as long as their link (each link's SSH connection, its
channels, keys, buffers), and a fan-out allocates enough to start a full collection every few
hundred runs: at 1,000 agents a fan-out cost about 0.5 s of full collections, at 10,000 ten
times that per collection, a cost per run that grows with the fleet.

`Pacer.step`, called every second (`STEP_EVERY`), moves what survived until then out of the
automatic collections' sight (`gc.freeze`): they scan only what came since. Objects that die
are still freed at once by their reference counts; only garbage in reference cycles among the
frozen waits, until the next sweep: every `sweep_every` seconds, or sooner once the process
holds a quarter more memory blocks than after the last sweep (a fan-out's runs, frozen while in
flight, would otherwise hold their memory until then), the frozen objects are given back
(`gc.unfreeze`) for one full collection before the next freeze. The blocks are counted, not the
frozen objects: counting those walks every one of them (a quarter of a second at 10,000
agents), where `sys.getallocatedblocks` reads the allocator's pools. A sweep walks every object
(hundreds of ms with thousands of links, the process doing nothing else): one that growth calls
for waits until `busy()` said for `QUIET_BEFORE_SWEEP` seconds that no run is in flight, unless
`sweep_every` has passed.
"""

from __future__ import annotations

import gc
import sys
import time
from collections.abc import Callable

# seconds between steps (what survived is frozen: a freeze costs nothing). Between two, what
# survives the young collections piles up in the oldest generation, and each automatic full
# collection scans all of it again: at 10,000 agents a fan-out's objects over 10 s cost 14-17
# of them, 3-5 s of CPU (profiled); over a second, a tenth of that pile each time
STEP_EVERY = 1.0
SWEEP_EVERY = 900.0  # seconds between full collections of everything, at most
SWEEP_GROWTH = 1.25  # ... or once the memory blocks grew by this factor since the last one
QUIET_BEFORE_SWEEP = 5.0  # ... and nothing was busy for this many seconds


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
        self.kept = 0  # memory blocks right after the last sweep (0: none yet)
        self.quiet_since: float | None = None  # when `busy()` last turned false
        self.frozen_at = 0.0

    def step(self) -> None:
        """Freeze what is tracked now; first, when a sweep is due, collect everything."""
        now = self.clock()
        if self.busy():
            self.quiet_since = None
        elif self.quiet_since is None:
            self.quiet_since = now
        # a sweep for growth waits until nothing ran for a while: not in the moments after a
        # fan-out, while its clients read what it did
        quiet = self.quiet_since is not None and now - self.quiet_since >= QUIET_BEFORE_SWEEP
        grown = quiet and self.kept > 0 and sys.getallocatedblocks() > SWEEP_GROWTH * self.kept
        if grown or now - self.swept >= self.sweep_every:
            gc.unfreeze()
            gc.collect()
            self.swept = now
            self.sweeps += 1
            self.kept = 0
        gc.freeze()
        self.frozen_at = now
        if not self.kept:
            self.kept = sys.getallocatedblocks()

    def between_steps(self) -> Callable[[], None]:
        """Freeze also after the collector's middle generation was collected, a second or more
        after the last freeze: a step is a timer on the event loop, and a loop busy with a
        fan-out's thousands of callbacks at once runs it seconds late, while what survives
        meanwhile is scanned again by every automatic full collection. A freeze between the
        collector's own passes moves only lists. Returns the function that stops it."""

        def collected(phase: str, info: dict[str, int]) -> None:
            if phase == "stop" and info["generation"] == 1:
                now = self.clock()
                if now - self.frozen_at >= STEP_EVERY:
                    gc.freeze()
                    self.frozen_at = now

        gc.callbacks.append(collected)
        return lambda: gc.callbacks.remove(collected)
