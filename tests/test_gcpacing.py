"""The garbage collector paced for a server with many agent links (scheduler/gcpacing.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref

from easytask.scheduler.gcpacing import CollectorPacing


class Node:
    """An object in a reference cycle: only the collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_the_long_lived_heap_is_frozen_and_full_passes_walk_only_what_is_new() -> None:
    async def main() -> None:
        busy = [True]
        pacing = CollectorPacing(lambda: busy[0], quiet_every=0.3, busy_every=60, check=0.05)
        pacing.start()
        try:
            assert gc.get_freeze_count() > 0  # what the process built is out of every pass
            # a full pass Python makes: its survivors are frozen at the next look
            frozen = gc.get_freeze_count()
            kept = [Node() for _ in range(1000)]
            gc.collect()
            await asyncio.sleep(0.2)
            assert pacing.freezes >= 1
            assert gc.get_freeze_count() >= frozen + 1000
            # garbage among frozen objects: not freed while runs are in flight here ...
            ref = weakref.ref(kept[0])
            del kept
            gc.collect()
            await asyncio.sleep(0.5)
            assert ref() is not None and pacing.collections == 1
            # ... and freed by the full collection of everything once nothing runs
            busy[0] = False
            for _ in range(40):
                await asyncio.sleep(0.05)
                if ref() is None:
                    break
            assert ref() is None and pacing.collections == 2
        finally:
            await pacing.close()
        assert gc.get_freeze_count() == 0

    asyncio.run(main())
