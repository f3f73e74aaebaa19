"""Database and disk faults: PostgreSQL restarted, SQLite's disk full, while agents stream output.

The server stays up, the API answers 503 with `Retry-After`, /readyz says not ready and why,
output waits in the agents' spools and a bounded server buffer, and once the database is back
every line is stored once, in order, and every run ends with its true state.

DBFAULTS_PAUSE (seconds PostgreSQL stays down, default 12) and DBFAULTS_AGENTS
(default 3) run the long version: `DBFAULTS_PAUSE=60 DBFAULTS_AGENTS=100`.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError

from easytask.errors import Unavailable
from easytask.store import outage
from easytask.store.db import Store
from tests.conftest import AgentFactory, ServerFactory
from tests.support import PostgresCluster, ServerHandle, db_execute, wait_until

pytestmark = pytest.mark.chaos

PAUSE = float(os.environ.get("DBFAULTS_PAUSE", "12"))
AGENTS = int(os.environ.get("DBFAULTS_AGENTS", "3"))
ROUNDS, PER_ROUND = 40, 500  # lines "line R.N", printed over about 20 s
PAD = "x" * 40
STREAM = f'for r in $(seq 1 {ROUNDS}); do seq -f "line $r.%g {PAD}" 1 {PER_ROUND}; sleep 0.5; done'
BUFFER = 64 << 10  # the server's buffer in these tests (EASYTASK_LOG_BUFFER)


def test_faults_are_told_from_errors() -> None:
    """A full disk, a failing disk and a lost connection are faults; a lock or a bad statement
    is an error as before (not a 503)."""
    full = sqlite3.OperationalError("database or disk is full")
    assert outage.fault_of(full) == outage.DISK_FULL
    assert outage.fault_of(OperationalError("INSERT", {}, full)) == outage.DISK_FULL
    assert outage.fault_of(OSError(errno.ENOSPC, "No space left on device")) == outage.DISK_FULL
    assert outage.fault_of(sqlite3.OperationalError("disk I/O error")) == outage.DISK_ERROR
    assert outage.fault_of(sqlite3.OperationalError("database is locked")) is None
    assert outage.fault_of(sqlite3.OperationalError("no such table: x")) is None
    assert outage.fault_of(ValueError("bad")) is None


@pytest.mark.postgres
def test_a_call_postgres_refuses_is_unavailable_until_it_answers(
    postgres: PostgresCluster,
) -> None:
    """Store.call raises Unavailable (with Retry-After) for a dropped connection and notes it in
    the store's health; the next call that succeeds clears it."""
    st = Store(postgres.new_database())

    async def scenario() -> None:
        assert await st.call(st.run_state_counts) is not None
        await st.call(st.ping)
        dbname = st.url.rsplit("/", 1)[1]
        postgres.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{dbname}' AND pid <> pg_backend_pid()"
        )
        with pytest.raises(Unavailable) as caught:
            await st.call(st.ping)
        assert (caught.value.status, caught.value.retry_after) == (503, outage.RETRY_AFTER)
        problem = st.health.problem()
        assert problem is not None and problem.startswith("unavailable: unreachable")
        await st.call(st.ping)
        assert st.health.problem() is None

    try:
        asyncio.run(scenario())
    finally:
        st.close()


@pytest.mark.postgres
def test_a_request_is_told_503_while_the_runs_wait_for_their_lines(
    postgres: PostgresCluster,
) -> None:
    """While the database refuses connections, the log writer keeps its lines: a flush by the
    task answering a request raises Unavailable at once, a flush by a task it started (a run)
    waits, and returns once the lines are stored, once each."""
    from easytask.scheduler.logwriter import LogWriter
    from easytask.store.models import Job, Run

    url = postgres.new_database()
    name = url.rsplit("/", 1)[1]
    st = Store(url)
    job, runs = st.create_job(
        Job(kind="adhoc", name="x", pattern="all", command="x", submitted_by="t"),
        [Run(job_id=0, task="x", host="h1", command="x")],
    )
    rid = runs[0].id or 0

    async def scenario() -> None:
        writer = LogWriter(st, interval=0.05)
        writer.start()
        writer.add([(rid, 1, time.time(), "stdout", "INFO", "one")])
        await writer.flush()
        postgres.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        postgres.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        )
        outage.mark_impatient()
        writer.add([(rid, 2, time.time(), "stdout", "INFO", "two")])
        run_task = asyncio.create_task(writer.flush())  # a run: waits the outage out
        with pytest.raises(Unavailable):
            async with asyncio.timeout(30):  # in this task (wait_for would start another)
                await writer.flush()
        assert writer.stalled and not run_task.done()
        problem = st.health.problem()
        assert problem is not None and "unreachable" in problem
        postgres.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        await asyncio.wait_for(run_task, 30)
        await writer.flush()  # stored now: the request's flush returns too
        await writer.close()

    try:
        asyncio.run(scenario())
        assert [line.text for line in st.read_lines(rid)] == ["one", "two"]
        assert st.health.problem() is None
    finally:
        postgres.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
        st.close()


def expected_lines() -> list[str]:
    return [f"line {r}.{n} {PAD}" for r in range(1, ROUNDS + 1) for n in range(1, PER_ROUND + 1)]


def assert_stored_once(server: ServerHandle, run_id: int, texts: list[str]) -> None:
    """The run's lines are exactly `texts` (stdout), each once, in order, seq 1..n."""
    lines = server.log_lines(run_id)
    assert [ln["seq"] for ln in lines] == list(range(1, len(lines) + 1))
    assert [ln["text"] for ln in lines if ln["stream"] == "stdout"] == texts


def readyz(server: ServerHandle) -> httpx.Response:
    return httpx.get(server.url + "/readyz", timeout=15)


def start_fleet(server: ServerHandle, start_agent: AgentFactory) -> list[str]:
    names = [f"fault{i}" for i in range(1, AGENTS + 1)]
    for name in names:
        start_agent(server, name)
    return names


def watch_buffer(server: ServerHandle, seconds: float) -> int:
    """Poll /readyz for `seconds`; the most output bytes the server held meanwhile."""
    most = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        resp = readyz(server)
        assert resp.status_code == 503, resp.text
        most = max(most, resp.json()["buffer"]["bytes"])
        time.sleep(0.5)
    return most


@pytest.mark.postgres
def test_postgres_restart_while_agents_stream(
    start_server: ServerFactory, start_agent: AgentFactory, monkeypatch: Any
) -> None:
    """PostgreSQL stopped for PAUSE s and started again while agents stream: 503 + Retry-After,
    /readyz not ready and why, a bounded buffer, then every line once and every run's true end."""
    cluster = PostgresCluster()  # its own cluster: this test stops it
    try:
        cluster.start()
        cluster.execute("CREATE DATABASE faults")
        url = cluster.url("faults")
        monkeypatch.setenv("EASYTASK_LOG_BUFFER", str(BUFFER))
        server = start_server(None, "--db", url)
        names = start_fleet(server, start_agent)
        job = server.submit(":".join(names), STREAM)
        runs = {r["host"]: r["id"] for r in job["runs"]}
        # a run that ends while the database is away: its end is recorded when it is back
        short = server.submit(names[0], "sleep 3; echo short done; exit 3")
        short_run = short["runs"][0]["id"]
        wait_until(
            lambda: all(len(server.log_lines(r)) > 100 for r in runs.values()),
            timeout=60,
            what="output from every agent",
        )
        cluster.halt()
        down = time.monotonic()

        # the API: 503 with Retry-After, promptly (not 500, not a hang)
        def refused() -> httpx.Response | None:
            started = time.monotonic()
            resp = server.http.get(f"/api/jobs/{job['job']['id']}")
            assert time.monotonic() - started < 15
            return resp if resp.status_code == 503 else None

        resp = wait_until(refused, timeout=30, what="the API to answer 503")
        assert resp.headers["retry-after"].isdigit()
        assert "database is unavailable" in resp.json()["error"]
        # reading a run's log waits for its buffered lines to be stored: during the outage it
        # answers 503 too, it does not wait for the database to come back
        started = time.monotonic()
        log_resp = server.http.get(f"/api/runs/{runs[names[0]]}/log")
        assert (log_resp.status_code, time.monotonic() - started < 15) == (503, True)
        assert log_resp.headers["retry-after"].isdigit()
        ready = wait_until(
            lambda: (
                (r := readyz(server)).status_code == 503
                and "unreachable" in r.json()["problems"].get("database", "")
                and r
            ),
            timeout=30,
            what="/readyz to say the database is unreachable",
        )
        assert ready.json()["problems"]["database"].startswith("unavailable: unreachable")
        assert "faults" not in ready.text and "127.0.0.1" not in ready.text
        # output waits: the server's buffer fills to its bound and stays there
        most = watch_buffer(server, max(1.0, PAUSE - (time.monotonic() - down)))
        limit = ready.json()["buffer"]["limit_bytes"]
        assert limit == BUFFER
        assert most >= limit // 2, most  # the buffer was used ...
        assert most <= limit + len(runs) * (256 << 10), most  # ... and bounded
        assert server.proc.alive()
        assert "the database" in server.proc.output() and "unreachable" in server.proc.output()
        cluster.resume()

        wait_until(lambda: readyz(server).status_code == 200, timeout=60, what="ready again")
        assert "answers again" in server.proc.output()
        data = server.wait_job(job["job"]["id"], timeout=120)
        assert {r["state"] for r in data["runs"]} == {"success"}
        for run_id in runs.values():
            assert_stored_once(server, run_id, expected_lines())
        ended = server.wait_job(short["job"]["id"], timeout=60)["runs"][0]
        assert (ended["state"], ended["exit_code"]) == ("failed", 3)
        assert_stored_once(server, short_run, ["short done"])
        assert server.proc.alive()
    finally:
        cluster.stop()


@pytest.mark.postgres
def test_two_servers_stay_up_through_a_postgres_restart(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Two servers on one PostgreSQL, down longer than --server-timeout: once it is back neither
    takes the other over (both heartbeats are as old as the outage); both stay up and each
    job's lines are stored once."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.execute("CREATE DATABASE pair")
        url = cluster.url("pair")
        a = start_server(None, "--db", url, "--server-timeout", "3s", state_dir=tmp_path / "a")
        (tmp_path / "b").mkdir()
        for name in ("client_key", "client_key.pub"):
            shutil.copy(a.state_dir / name, tmp_path / "b" / name)
        b = start_server(None, "--db", url, "--server-timeout", "3s", state_dir=tmp_path / "b")
        start_agent(a, "pair-a")
        start_agent(b, "pair-b")
        command = "for i in $(seq 1 60); do echo p-$i; sleep 0.2; done"
        jobs = [(a, a.submit("pair-a", command)), (b, b.submit("pair-b", command))]
        for server, job in jobs:
            run_id = job["runs"][0]["id"]
            wait_until(
                lambda s=server, r=run_id: len(s.log_lines(r)) >= 3,  # type: ignore[misc]
                what="first lines",
            )
        cluster.halt()
        wait_until(lambda: all(readyz(s).status_code == 503 for s in (a, b)), what="both not ready")
        time.sleep(8)  # longer than the servers' 3 s timeout
        cluster.resume()
        for server, job in jobs:
            final = server.wait_job(job["job"]["id"], timeout=120)
            assert final["job"]["state"] == "success", final
            lines = server.log_lines(job["runs"][0]["id"])
            assert [ln["text"] for ln in lines] == [f"p-{i}" for i in range(1, 61)]
        # the servers look for stopped ones again once the others had time to beat: nobody is
        ids = {(s.state_dir / "server.id").read_text().strip() for s in (a, b)}
        wait_until(
            lambda: all(
                "stopped servers again after the database outage: 0 found" in s.proc.output()
                for s in (a, b)
            ),
            timeout=30,
            what="take-over checks to resume on both servers",
        )
        assert {row[0] for row in db_execute(url, "SELECT id FROM server_node")} == ids
        for server in (a, b):
            assert server.proc.alive()
            assert "took over" not in server.proc.output()
            assert "presumed dead" not in server.proc.output()
    finally:
        cluster.stop()


def fill(path: Path) -> None:
    """Write zeros into `path` until its file system is full."""
    block = b"\0" * (64 << 10)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, block)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
        try:  # the last pages, smaller than a block
            while True:
                os.write(fd, b"\0" * 512)
        except OSError:
            pass
    finally:
        os.close(fd)


@pytest.mark.sqlite
def test_sqlite_disk_full_while_agents_stream(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path, monkeypatch: Any
) -> None:
    """SQLite's disk fills (ENOSPC) mid-run: runs go on, /readyz and the log say "disk full",
    writes resume once space is freed, every line is stored once and the file is intact."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(disk)], check=True)
    try:
        monkeypatch.setenv("EASYTASK_LOG_BUFFER", str(BUFFER))
        db = disk / "easytask.db"
        server = start_server(None, "--db", f"sqlite:///{db}")
        names = start_fleet(server, start_agent)
        job = server.submit(":".join(names), STREAM)
        runs = {r["host"]: r["id"] for r in job["runs"]}
        wait_until(
            lambda: all(len(server.log_lines(r)) > 100 for r in runs.values()),
            timeout=60,
            what="output from every agent",
        )
        # a run that ends while the disk is full: its end is stored once space returns
        short = server.submit(names[0], "sleep 3; echo short done; exit 3")
        filler = disk / "filler"
        fill(filler)
        ready = wait_until(
            lambda: (
                (r := readyz(server)).status_code == 503
                and "disk full" in r.json()["problems"].get("database", "")
                and r
            ),
            timeout=60,
            what="/readyz to say the disk is full",
        )
        assert ready.json()["problems"]["database"].startswith("unavailable: disk full")
        assert "disk full" in server.proc.output()
        # runs go on (the agents keep printing into their spools); a write is refused with 503
        resp = server.http.post("/api/jobs", json={"pattern": names[0], "command": "true"})
        assert resp.status_code == 503 and resp.headers["retry-after"].isdigit(), resp.text
        assert server.proc.alive()
        most = watch_buffer(server, 3)
        assert most <= BUFFER + len(runs) * (256 << 10), most
        filler.unlink()  # space returns

        wait_until(lambda: readyz(server).status_code == 200, timeout=60, what="ready again")
        data = server.wait_job(job["job"]["id"], timeout=120)
        assert {r["state"] for r in data["runs"]} == {"success"}
        for run_id in runs.values():
            assert_stored_once(server, run_id, expected_lines())
        ended = server.wait_job(short["job"]["id"], timeout=60)["runs"][0]
        assert (ended["state"], ended["exit_code"]) == ("failed", 3)
        assert_stored_once(server, ended["id"], ["short done"])
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert server.proc.alive()
        server.proc.kill9()
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
