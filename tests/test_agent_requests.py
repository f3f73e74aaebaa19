"""What anyone who reaches the agent port can make the server keep: pending requests are capped
and rate-limited per address, hellos are checked against their schema (real servers, real agent
processes)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.hub import LiveHub
from easytask.store.audit import AuditNote
from easytask.store.db import Store, sqlite_url
from easytask.transport.agentlink import AgentLink
from tests.browser.support import Browserless, admin_password
from tests.conftest import TEST_DB, AgentFactory, ServerFactory
from tests.support import PostgresCluster, Procs, ServerHandle, launch_agent, wait_until

# `easytask agent` whose facts carry a malformed load
BAD_FACTS_AGENT = [
    sys.executable,
    "-c",
    "import sys\n"
    "import easytask.agent.facts as f\n"
    "real, room = f.gather, f.headroom\n"
    "f.gather = lambda running=0: {**real(running), 'load': {'a': 1}}\n"
    "f.headroom = lambda *a, **k: {**room(*a, **k), 'load': {'a': 1}}\n"
    "from easytask.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n",
]


def test_malformed_facts_are_refused_and_pages_keep_working(
    start_server: ServerFactory, procs: Procs, tmp_path: Path
) -> None:
    """An agent whose facts break the schema (`"load": {"a": 1}`) is refused, with the field
    named, even with a valid token; nothing is stored and `/` and `/agents` answer 200."""
    server = start_server()
    launch_agent(
        procs, server, "omicron", tmp_path / "omicron", wait=False, command=BAD_FACTS_AGENT
    )
    wait_until(
        lambda: any(r["name"] == "omicron" for r in server.get("/api/agents")["refused"]),
        what="refusal",
    )
    (refused, *_) = [r for r in server.get("/api/agents")["refused"] if r["name"] == "omicron"]
    assert "bad hello: facts.load" in refused["reason"]
    assert server.get("/api/agents")["agents"] == []
    # its retries are refused again, and audited once, not once a second
    wait_until(lambda: len(_refusals(server, "omicron")) >= 3, what="omicron's retries")
    events = server.get("/api/audit", action="agent.refused")["events"]
    assert len([e for e in events if e["detail"]["agent"] == "omicron"]) == 1
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    for page in ("/", "/agents"):
        assert admin.http.get(page).status_code == 200, page
    admin.close()


def test_pending_requests_per_address_are_capped_and_rate_limited(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """With `--agents-pending-max 2`, a third pending name from one address is refused; deleting
    a pending record does not make room before the window ends (at most 2 new per 10 minutes).
    A name enrolled by token is not a pending request."""
    server = start_server(None, "--agents-pending-max", "2")
    for name in ("p1", "p2"):
        start_agent(server, name, enroll=False, wait=False)
        wait_until(lambda n=name: server.agent_status(n) == "pending", what=f"{name} pending")
    start_agent(server, "p3", enroll=False, wait=False)
    wait_until(
        lambda: any(r["name"] == "p3" for r in server.get("/api/agents")["refused"]),
        what="refusal",
    )
    (refused, *_) = [r for r in server.get("/api/agents")["refused"] if r["name"] == "p3"]
    assert "too many pending requests from 127.0.0.1" in refused["reason"]
    assert server.agent_status("p3") is None
    before = len(_refusals(server, "p3"))
    assert server.cli("agents", "delete", "p1").returncode == 0
    # p1 and p3 keep retrying: each is refused again after the delete, neither becomes pending
    wait_until(lambda: len(_refusals(server, "p3")) > before, what="p3 refused again")
    wait_until(lambda: _refusals(server, "p1"), what="p1 refused after its delete")
    assert server.agent_status("p3") is None
    assert server.agent_status("p1") is None
    start_agent(server, "p4")  # enrolled by token: online at once
    pending = [a for a in server.get("/api/agents")["agents"] if a["state"] == "pending"]
    assert [a["name"] for a in pending] == ["p2"]


def _refusals(server: ServerHandle, name: str) -> list[dict[str, Any]]:
    return [r for r in server.get("/api/agents")["refused"] if r["name"] == name]


@pytest.fixture
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store at the current schema on the database the tests run on."""
    if TEST_DB == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = cluster.new_database(empty=True)
    else:
        url = sqlite_url(tmp_path / "easytask.db")
    st = Store(url)
    st.create_schema()
    yield st
    st.close()


class _PendingConn:
    """The SSH connection of a link whose hello is already read: a refused link is closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def test_a_delete_wins_over_a_hello_in_progress(store: Store) -> None:
    """A pending agent's hello that read its record before an admin deleted it does not
    recreate the record: the hello is refused, the name stays deleted (real store)."""
    hello = {"name": "p1", "slots": 1, "version": "test", "facts": {}}

    def link() -> AgentLink:
        conn: Any = _PendingConn()
        return AgentLink(conn, "p1", "SHA256:p1", "ssh-ed25519 AAAAp1", "127.0.0.1", False)

    async def scenario() -> None:
        registry = AgentRegistry(store, LiveHub(), "s1")
        await registry.load()
        assert not await registry.admit(link(), hello, False)
        row = await store.call(store.get_agent, "p1")
        assert row is not None and row.state == "pending"
        note = AuditNote("admin", "agent.delete", "test", {"agent": "p1"})
        retry = link()
        # the retried hello starts first: the store sees its read of the record, then the
        # delete, then the hello's write
        admitted, deleted = await asyncio.gather(
            registry.admit(retry, hello, False), registry.delete("p1", note)
        )
        assert not admitted and deleted is not None
        assert await store.call(store.get_agent, "p1") is None
        assert "p1" not in registry.agents
        assert "deleted while it said hello" in registry.refused[-1]["reason"]
        await registry.close()

    asyncio.run(scenario())
