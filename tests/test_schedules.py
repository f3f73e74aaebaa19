"""Schedules fire at the right minute, once across servers, with the chosen catch-up."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from easytask.scheduler.schedules import Scheduler
from easytask.store.db import Store, sqlite_url
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import wait_until

UTC = UTC


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class Starts:
    """Records what the scheduler started (the job engine is tested elsewhere)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Path, str]] = []

    async def __call__(self, path: Path, name: str) -> int:
        self.calls.append((path, name))
        return len(self.calls)


def book(tmp_path: Path, schedule: str, tz: str = "UTC", catch_up: str = "none") -> Path:
    d = tmp_path / "books"
    write(
        d / "job.yml",
        f"""\
        name: every
        hosts: all
        schedule: "{schedule}"
        tz: {tz}
        catch_up: {catch_up}
        tasks:
          - name: t
            command: "true"
        """,
    )
    return d


def make(
    tmp_path: Path, books: Path, clock: Clock, starts: Starts, server: str = "s1"
) -> tuple[Scheduler, Store]:
    store = Store(sqlite_url(tmp_path / "db.sqlite"))
    store.create_schema()
    return Scheduler(store, books, starts, server, clock=clock), store


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_fires_at_the_right_minute_and_only_once(tmp_path: Path) -> None:
    """*/5 fires at :05, not before, and not again within that minute."""
    clock = Clock(datetime(2026, 3, 2, 10, 2, tzinfo=UTC))
    starts = Starts()
    sched, store = make(tmp_path, book(tmp_path, "*/5 * * * *"), clock, starts)

    async def scenario() -> None:
        await sched.sync()
        assert await sched.tick() == []
        (row,) = await store.call(store.list_schedules)
        assert row.next_fire.replace(tzinfo=UTC) == datetime(2026, 3, 2, 10, 5, tzinfo=UTC)
        clock.now = datetime(2026, 3, 2, 10, 4, 59, tzinfo=UTC)
        assert await sched.tick() == []
        clock.now = datetime(2026, 3, 2, 10, 5, 0, tzinfo=UTC)
        assert await sched.tick() == [1]
        clock.now = datetime(2026, 3, 2, 10, 5, 40, tzinfo=UTC)
        assert await sched.tick() == []
        clock.now = datetime(2026, 3, 2, 10, 10, 1, tzinfo=UTC)
        assert await sched.tick() == [2]

    run(scenario())
    store.close()
    assert [name for _, name in starts.calls] == ["every", "every"]


def test_two_servers_fire_once(tmp_path: Path) -> None:
    """Two schedulers on one database: the unique fire record lets only one of them fire."""
    clock = Clock(datetime(2026, 3, 2, 10, 2, tzinfo=UTC))
    starts_a, starts_b = Starts(), Starts()
    books = book(tmp_path, "*/5 * * * *")
    a, store_a = make(tmp_path, books, clock, starts_a, "a")
    b, store_b = make(tmp_path, books, clock, starts_b, "b")

    async def scenario() -> None:
        await a.sync()
        await a.tick()
        await b.tick()
        clock.now = datetime(2026, 3, 2, 10, 5, 1, tzinfo=UTC)
        await asyncio.gather(a.tick(), b.tick())
        await asyncio.gather(a.tick(), b.tick())

    run(scenario())
    assert len(starts_a.calls) + len(starts_b.calls) == 1
    (row,) = store_a.list_schedules()
    assert len(store_a.fires(row.id)) == 1
    store_a.close()
    store_b.close()


@pytest.mark.parametrize(("catch_up", "fired"), [("one", 1), ("none", 0)])
def test_catch_up_after_downtime(tmp_path: Path, catch_up: str, fired: int) -> None:
    """After missing several fire times, catch_up one fires once; none fires nothing."""
    clock = Clock(datetime(2026, 3, 2, 10, 2, tzinfo=UTC))
    starts = Starts()
    sched, store = make(tmp_path, book(tmp_path, "*/5 * * * *", catch_up=catch_up), clock, starts)

    async def scenario() -> None:
        await sched.sync()
        await sched.tick()
        clock.now = datetime(2026, 3, 2, 12, 33, tzinfo=UTC)  # down for two and a half hours
        await sched.tick()
        await sched.tick()

    run(scenario())
    assert len(starts.calls) == fired
    (row,) = store.list_schedules()
    assert row.next_fire.replace(tzinfo=UTC) == datetime(2026, 3, 2, 12, 35, tzinfo=UTC)
    if fired:
        assert row.last_fire.replace(tzinfo=UTC) == datetime(2026, 3, 2, 12, 30, tzinfo=UTC)
    store.close()


def test_time_zone_of_the_schedule(tmp_path: Path) -> None:
    """0 3 * * * in Europe/Berlin is 02:00 UTC in winter and 01:00 UTC in summer."""
    clock = Clock(datetime(2026, 1, 10, 12, 0, tzinfo=UTC))
    starts = Starts()
    sched, store = make(tmp_path, book(tmp_path, "0 3 * * *", tz="Europe/Berlin"), clock, starts)

    async def scenario() -> None:
        await sched.sync()
        await sched.tick()

    run(scenario())
    (row,) = store.list_schedules()
    assert row.next_fire.replace(tzinfo=UTC) == datetime(2026, 1, 11, 2, 0, tzinfo=UTC)
    store.update_schedule("every", next_fire=None)
    clock.now = datetime(2026, 7, 10, 12, 0, tzinfo=UTC)
    run(sched.tick())
    (row,) = store.list_schedules()
    assert row.next_fire.replace(tzinfo=UTC) == datetime(2026, 7, 11, 1, 0, tzinfo=UTC)
    store.close()


def test_schedules_cli_list_run_disable(
    tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """`easytask schedules` lists next fire times; run starts the playbook; disable sticks."""
    books = tmp_path / "books"
    write(
        books / "tick.yml",
        """\
        name: tick
        hosts: all
        schedule: "@hourly"
        tasks:
          - name: hello
            command: echo scheduled hello
        """,
    )
    server = start_server(None, "--playbooks", str(books))
    start_agent(server, "sch1")
    listing = server.cli("schedules")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split("\n")[1].split()[:4] == ["tick", "@hourly", "UTC", "yes"]
    started = server.cli("schedules", "run", "tick")
    assert started.returncode == 0, started.stderr
    job_id = int(started.stdout.split()[-1])
    data = server.wait_job(job_id)
    assert data["job"]["kind"] == "schedule"
    assert data["runs"][0]["state"] == "success"
    assert server.cli("schedules", "disable", "tick").stdout.strip() == "schedule tick: disabled"
    wait_until(lambda: not server.get("/api/schedules")["schedules"][0]["enabled"], what="disabled")
