"""The audit log: every ad hoc run and kill on record; tampering is caught."""

from __future__ import annotations

import json

import pytest

from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, db_execute, wait_until


@pytest.fixture
def audited(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with one agent, one finished run and one killed job on record."""
    server = start_server()
    start_agent(server, "aud1")
    assert server.cli("run", "aud1", "-a", "echo hello").returncode == 0
    job = server.submit("aud1", "sleep 30")
    wait_until(
        lambda: server.get(f"/api/jobs/{job['job']['id']}")["runs"][0]["state"] == "running",
        what="running",
    )
    server.post(f"/api/jobs/{job['job']['id']}/kill")
    server.wait_job(job["job"]["id"])
    return server


def test_runs_kills_and_agents_are_on_record(audited: ServerHandle) -> None:
    """job.submit has who, from where, pattern, hosts and command; kills and finishes follow."""
    events = json.loads(audited.cli("audit", "--format", "json", "--limit", "50").stdout)
    actions = [e["action"] for e in reversed(events)]
    assert actions[:2] == ["agent.token", "agent.enroll"]
    assert actions.count("job.submit") == 2 and "job.kill" in actions
    assert actions.count("job.finish") == 2
    submit = next(e for e in reversed(events) if e["action"] == "job.submit")
    assert submit["actor"] == "admin"
    assert submit["source"].startswith("cli 127.0.0.1")
    assert submit["detail"]["pattern"] == "aud1"
    assert submit["detail"]["hosts"] == ["aud1"]
    assert submit["detail"]["command"] == "echo hello"
    finish = next(
        e for e in events if e["action"] == "job.finish" and e["detail"]["state"] == "terminated"
    )
    assert finish["detail"]["runs"] == {"terminated": 1}
    ok = audited.cli("audit", "verify")
    assert ok.returncode == 0 and ok.stdout.startswith("audit chain intact:")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            "UPDATE audit_event SET detail = replace(detail, 'echo hello', 'echo bye') WHERE id = 3",
            "row 3: contents do not match its hash (edited)",
        ),
        (
            "DELETE FROM audit_event WHERE id = 3",
            "row 4: chain broken: a row before it was deleted or replaced",
        ),
        (
            "UPDATE audit_event SET actor = 'mallory' WHERE id = 2",
            "row 2: contents do not match its hash (edited)",
        ),
    ],
)
def test_tampering_is_reported_at_the_first_bad_row(
    audited: ServerHandle, tamper: str, message: str
) -> None:
    """Editing, deleting or rewriting a row directly in the database breaks verification there."""
    db_execute(audited.db_url, tamper)
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert message in result.stdout


def test_rows_swapped_out_of_order_are_caught(audited: ServerHandle) -> None:
    """Two rows swapped (ids exchanged) no longer chain."""
    db_execute(audited.db_url, "UPDATE audit_event SET id = -1 WHERE id = 2")
    db_execute(audited.db_url, "UPDATE audit_event SET id = 2 WHERE id = 3")
    db_execute(audited.db_url, "UPDATE audit_event SET id = 3 WHERE id = -1")
    result = audited.cli("audit", "verify")
    assert result.returncode == 1
    assert "row 2: chain broken" in result.stdout
