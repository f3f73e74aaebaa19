"""A server's heartbeat on a shared database keeps its pace while its database thread is busy."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from easytask.scheduler.cluster import Cluster
from easytask.store import servers as rows
from easytask.store.db import Store
from easytask.store.models import Job, Run
from easytask.store.pglog import Fenced
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


@pytest.mark.postgres
def test_a_server_whose_work_was_taken_over_stores_no_more_lines(
    postgres: PostgresCluster,
) -> None:
    """Lines are stored only while the writing server's heartbeat row exists: a take-over
    skips a row a batch holds (it waits its turn), and once it deleted the row a late batch
    of the old server raises `Fenced` and stores nothing (the new holder re-read the output
    from the agent: storing it again would store it twice)."""
    url = postgres.new_database()
    old, new = Store(url), Store(url)
    try:
        assert rows.heartbeat(old, "old", first=True)
        assert rows.heartbeat(new, "new", first=True)
        old.fence_node = "old"
        job = Job(kind="adhoc", name="t", pattern="web1", command="seq 3", server="old")
        _, (run,) = old.create_job(job, [Run(job_id=0, task="t", host="web1", command="seq 3")])
        assert run.id is not None
        now = time.time()
        old.write_lines([(run.id, 1, now, "stdout", "INFO", "1")])
        rows.leave(old, "old")  # its heartbeat as old as can be: the next check takes it over

        held = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
        try:  # a batch of the old server in its transaction, holding its row
            held.execute("SELECT 1 FROM server_node WHERE id = 'old' FOR KEY SHARE")
            assert rows.take_over(new, "new", dead_after=3) == []  # skipped, not waited on
        finally:
            held.commit()
            held.close()
        (taken,) = rows.take_over(new, "new", dead_after=3)
        assert taken.server == "old"
        with pytest.raises(Fenced, match="presumed dead"):
            old.write_lines([(run.id, 2, now, "stdout", "INFO", "2")])
        assert [line.text for line in new.read_lines(run.id)] == ["1"]
    finally:
        old.close()
        new.close()
