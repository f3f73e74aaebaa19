"""What anyone who reaches the agent port can make the server keep: pending requests are capped
and rate-limited per address, hellos are checked against their schema (real servers, real agent
processes)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory
from tests.support import Procs, launch_agent, wait_until

# `easytask agent` whose facts carry a malformed load
BAD_FACTS_AGENT = [
    sys.executable,
    "-c",
    "import sys\n"
    "import easytask.agent.facts as f\n"
    "real = f.gather\n"
    "f.gather = lambda running=0: {**real(running), 'load': {'a': 1}}\n"
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
    time.sleep(2)  # its retries are audited once, not once a second
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
    assert server.cli("agents", "delete", "p1").returncode == 0
    time.sleep(2)  # p3 retries meanwhile
    assert server.agent_status("p3") is None
    start_agent(server, "p4")  # enrolled by token: online at once
    pending = [a for a in server.get("/api/agents")["agents"] if a["state"] == "pending"]
    assert [a["name"] for a in pending] == ["p2"]
