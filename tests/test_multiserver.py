"""Several servers on one PostgreSQL: agents that know more than one server fail over."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory
from tests.helpers import db_execute, free_port, wait_until
from tests.pg import PostgresCluster


@pytest.mark.postgres
def test_agent_fails_over_to_the_next_server_on_the_same_database(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """An agent given `--server A,B` uses A; when A stops it runs B's jobs, with A's history."""
    url = postgres.new_database()
    first = start_server(None, "--db", url, state_dir=tmp_path / "a")
    second_state = tmp_path / "b"
    second_state.mkdir()
    # servers sharing a database share the key agents pin
    for name in ("client_key", "client_key.pub"):
        shutil.copy(first.state_dir / name, second_state / name)
    second_port = free_port()
    agent = start_agent(first, "fo1", "--server", f"{first.agents_addr},127.0.0.1:{second_port}")
    job = first.submit("fo1", "echo on-first")
    assert first.wait_job(job["job"]["id"])["job"]["state"] == "success"

    second = start_server(
        None, "--db", url, state_dir=second_state, agents=f"127.0.0.1:{second_port}"
    )
    assert second.agent_status("fo1") == "unreachable"  # known from the database, held by the first
    # not handed over (yet): a run for an agent another server holds waits, then is unreachable
    waiting = second.submit("fo1", "echo never", pending_timeout="2s")
    assert second.wait_job(waiting["job"]["id"])["job"]["state"] == "unreachable"
    first.proc.stop()
    wait_until(lambda: second.agent_status("fo1") == "online", timeout=60, what="failover")
    assert f"connected to 127.0.0.1:{second_port} as fo1" in agent.output()

    job = second.submit("fo1", "echo on-second")
    assert second.wait_job(job["job"]["id"])["job"]["state"] == "success"
    run_id = job["runs"][0]["id"]
    assert [ln["text"] for ln in second.log_lines(run_id)] == ["on-second"]
    # the first server's runs are in the shared database, visible from the second
    states = [r["state"] for r in second.get("/api/runs")["runs"]]
    assert states == ["success", "unreachable", "success"]


@pytest.mark.postgres
def test_a_server_starting_leaves_another_servers_runs_alone(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A second server starting on the shared database does not resume the first one's runs."""
    url = postgres.new_database()
    first = start_server(None, "--db", url, state_dir=tmp_path / "a")
    start_agent(first, "own1")
    job = first.submit("own1", "sleep 4; echo done-on-first")
    run_id = job["runs"][0]["id"]
    wait_until(
        lambda: first.get(f"/api/runs/{run_id}")["run"]["state"] == "running",
        timeout=30,
        what="run started",
    )
    second = start_server(None, "--db", url, state_dir=tmp_path / "b")
    assert first.wait_job(job["job"]["id"])["job"]["state"] == "success"
    kinds = [e["kind"] for e in second.get(f"/api/runs/{run_id}")["events"]]
    assert "resumed" not in kinds
    assert [ln["text"] for ln in second.log_lines(run_id)] == ["done-on-first"]
    # the job records the server that ran it: the first one's lasting id
    server_ids = db_execute(url, "SELECT server FROM job")
    assert server_ids == [((tmp_path / "a" / "server.id").read_text().strip(),)]
