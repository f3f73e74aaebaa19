"""A scoped operator's kills and schedule switches are checked against the scope, through the API
and the console, and every refusal is audited (a real server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from easytask.store.models import RunState
from tests.browser.support import Browserless
from tests.conftest import ServerFactory, write
from tests.support import ServerHandle

BOOK = """\
    name: {name}
    hosts: {hosts}
    schedule: "0 3 * * *"
    tasks:
      - name: stamp
        command: echo stamp
    """


@pytest.fixture
def server(start_server: ServerFactory, tmp_path: Path) -> ServerHandle:
    inventory = write(
        tmp_path / "hosts.ini",
        "[web]\nweb1\nweb2\n[db]\ndb1\n[all:vars]\neasytask_connection=agent\n",
    )
    books = tmp_path / "books"
    write(books / "nightly.yml", BOOK.format(name="nightly", hosts="all"))
    write(books / "webly.yml", BOOK.format(name="webly", hosts="web"))
    handle = start_server(inventory, "--playbooks", str(books))
    handle.post(
        "/api/users",
        {"name": "otto", "role": "operator", "password": "operator-pass-1", "scope": "web"},
    )
    return handle


def otto_token(server: ServerHandle) -> httpx.Client:
    token = server.post("/api/tokens", {"name": "t", "user": "otto"})["token"]
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=30
    )


def otto_console(server: ServerHandle) -> Browserless:
    console = Browserless(server)
    assert console.login("otto", "operator-pass-1").status_code == 303
    return console


def refusals(server: ServerHandle) -> list[dict[str, Any]]:
    """The details of the scope refusals, oldest first."""
    events = server.get("/api/audit", action="job.refused", limit=100)["events"]
    return [e["detail"] for e in reversed(events)]


def test_kills_check_every_host_of_the_job_or_run(server: ServerHandle) -> None:
    """A job that reaches a host outside the scope is not killed at all; a run outside it is
    not found (404: the user cannot read it either), the attempt audited; a run inside it may
    be killed; API and console alike."""
    job = server.post("/api/jobs", {"pattern": "all", "command": "true", "pending_timeout": "10m"})
    runs = {r["host"]: r["id"] for r in job["runs"]}
    job_id = job["job"]["id"]
    otto = otto_token(server)
    resp = otto.post(f"/api/jobs/{job_id}/kill")
    assert resp.status_code == 403
    assert resp.json()["error"] == "refused: 1 host(s) outside your scope 'web': db1"
    resp = otto.post(f"/api/runs/{runs['db1']}/kill")
    assert resp.status_code == 404 and resp.json()["error"] == f"no run {runs['db1']}"
    console = otto_console(server)
    resp = console.api_post(f"/api/runs/{runs['db1']}/kill")
    assert resp.status_code == 404 and "db1" not in resp.json()["error"]
    resp = console.api_post(f"/api/jobs/{job_id}/kill")
    assert resp.status_code == 403
    listed = server.get(f"/api/jobs/{job_id}")
    assert all(r["state"] not in RunState.FINAL for r in listed["runs"]), listed
    assert otto.post(f"/api/runs/{runs['web1']}/kill").status_code == 200
    kinds = [(d["kind"], d["outside"]) for d in refusals(server)]
    assert kinds == [
        ("job.kill", ["db1"]),
        ("run.kill", ["db1"]),
        ("run.kill", ["db1"]),
        ("job.kill", ["db1"]),
    ]
    console.close()
    otto.close()
    server.post(f"/api/jobs/{job_id}/kill")


def enabled(server: ServerHandle) -> dict[str, bool]:
    return {s["name"]: s["enabled"] for s in server.get("/api/schedules")["schedules"]}


def test_scoped_operator_cannot_switch_a_schedule_on(server: ServerHandle) -> None:
    """Schedules fire with the server's authority: a scoped operator may not switch one on
    (whatever its hosts), and may switch off or run only one whose hosts are in the scope."""
    assert enabled(server) == {"nightly": True, "webly": True}
    server.post("/api/schedules/nightly/disable")
    server.post("/api/schedules/webly/disable")
    otto = otto_token(server)
    resp = otto.post("/api/schedules/nightly/enable")
    assert resp.status_code == 403 and "server's authority" in resp.json()["error"]
    console = otto_console(server)
    assert console.api_post("/api/schedules/webly/enable").status_code == 403
    assert enabled(server) == {"nightly": False, "webly": False}
    server.post("/api/schedules/nightly/enable")
    server.post("/api/schedules/webly/enable")
    resp = otto.post("/api/schedules/nightly/disable")
    assert resp.status_code == 403 and "db1" in resp.json()["error"]
    assert console.api_post("/api/schedules/nightly/disable").status_code == 403
    assert otto.post("/api/schedules/nightly/run").status_code == 403
    assert enabled(server) == {"nightly": True, "webly": True}
    assert console.api_post("/api/schedules/webly/disable").status_code == 200
    assert enabled(server) == {"nightly": True, "webly": False}
    kinds = [(d["kind"], d["schedule"]) for d in refusals(server)]
    assert kinds == [
        ("schedule.enable", "nightly"),
        ("schedule.enable", "webly"),
        ("schedule.disable", "nightly"),
        ("schedule.disable", "nightly"),
        ("schedule", "nightly"),
    ]
    console.close()
    otto.close()
