"""A server's heartbeat on a shared database keeps its pace while its database thread is busy."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from easytask.scheduler.cluster import Cluster
from easytask.store import servers as rows
from easytask.store.db import Store
from tests.support import PostgresCluster, db_execute


@pytest.mark.postgres
def test_heartbeats_go_on_while_the_database_thread_has_seconds_of_queued_work(
    postgres: PostgresCluster,
) -> None:
    """A fan-out can queue seconds of work on the server's one database thread; the heartbeat
    must not wait behind it, or the other servers presume this one dead (after
    `--server-timeout`), take its work over and stop it. Beats every 0.2 s, the thread busy
    for 3 s: the heartbeat row is never more than a second old meanwhile."""
    url = postgres.new_database()
    store = Store(url)
    node = "busy-node"
    try:
        assert rows.heartbeat(store, node, first=True)

        async def beat_while_busy() -> list[float]:
            cluster: Any = Cluster(store, None, None, None, node, beat=0.2, dead_after=30)  # type: ignore[arg-type]
            beats = asyncio.create_task(cluster._heartbeats())
            busy = asyncio.ensure_future(store.call(time.sleep, 3.0))
            ages = []
            while not busy.done():
                await asyncio.sleep(0.25)
                (age,) = await asyncio.to_thread(
                    lambda: db_execute(
                        url,
                        "SELECT extract(epoch FROM now() - seen_at) FROM server_node WHERE id = :n",
                        {"n": node},
                    )[0]
                )
                ages.append(float(age))
            beats.cancel()
            await asyncio.gather(beats, busy, return_exceptions=True)
            return ages

        ages = asyncio.run(beat_while_busy())
        assert len(ages) >= 8
        assert max(ages[2:]) < 1.0, ages  # without its own thread: 3 s and more
    finally:
        store.close()
