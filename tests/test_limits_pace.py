"""Reading the inventory's agent limits keeps its pace while a whole fleet comes online."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from easytask.service.busy import LimitsWatch

SHARE = 0.1  # busy.WAKE_SHARE: readings' most share of the time


class _Costly(LimitsWatch):
    """A reading that takes `cost` s, as one over a large fleet does; each one counted."""

    def __init__(self, cost: float) -> None:
        super().__init__(services=None, every=10.0)  # type: ignore[arg-type]
        self.cost = cost
        self.readings = 0

    async def refresh(self, only: Any = None) -> dict[str, Any]:
        self.readings += 1
        await asyncio.to_thread(time.sleep, self.cost)
        return {}


def test_agents_coming_online_all_the_time_do_not_keep_the_reading_busy() -> None:
    """Agents online every 2 ms for 1.5 s (a reconnect storm): readings of 50 ms take at most
    about SHARE of that time, not all of it; a wake is still read after the rest."""

    async def storm() -> tuple[int, int]:
        watch = _Costly(0.05)
        watch.start()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            watch.wake()
            await asyncio.sleep(0.002)
        during = watch.readings
        await asyncio.sleep(0.05 / SHARE + 0.2)  # the last wake is read after the rest
        after = watch.readings
        assert watch._task is not None
        watch._task.cancel()
        return during, after

    during, after = asyncio.run(storm())
    # back to back, 1.5 s of 50 ms readings would be about 30
    assert 2 <= during <= 1.5 / (0.05 / SHARE) + 2, during
    assert after == during + 1


def test_the_rest_after_a_reading_is_proportional_to_its_cost() -> None:
    from easytask.service.busy import WAKE_SHARE

    assert WAKE_SHARE == SHARE
    assert LimitsWatch.rest_after(0.0) == 0.0  # a small fleet: read again at once
    assert abs(LimitsWatch.rest_after(0.3) - 0.3 * (1 / WAKE_SHARE - 1)) < 1e-9
