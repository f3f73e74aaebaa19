"""Schedules stored in the database, through a real server and real agents: made, changed,
paused, resumed, run now and deleted through the API and the CLI (each audited), refused with
400 naming the field when wrong (nothing stored), shown beside the file schedules (read-only)
with their next fire times; a fire starts the schedule's job through the launch path (a
template that needs approval waits for it), once across two servers on one PostgreSQL."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from easytask.store.db import Store
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import PostgresCluster, ServerHandle, db_execute, user_client, wait_until

TEMPLATE = {
    "name": "say-env",
    "command": "echo scheduled {{ params.env | quote }}",
    "pattern": "web",
    "params": [{"name": "env", "type": "choice", "choices": ["staging", "prod"], "required": True}],
}
GUARDED = {**TEMPLATE, "name": "guarded", "approval": "required"}
NIGHTLY = {
    "name": "nightly",
    "cron": "30 2 * * *",
    "tz": "Europe/Berlin",
    "kind": "template",
    "template": "say-env",
    "params": {"env": "prod"},
}
FILE_BOOK = """\
name: from-file
hosts: all
schedule: "@hourly"
tasks:
  - name: t
    command: echo from a file
"""


def _audit(server: ServerHandle, action: str) -> list[dict[str, Any]]:
    return list(server.get("/api/audit", action=action)["events"])


def _due_now(server: ServerHandle, name: str) -> int:
    """Make a schedule's fire time come: its next fire time a few seconds ago (the scheduler
    fires a time that is due and not late, as it would at that minute); the job it started.
    Until a fire is recorded, a fire time a server wrote over it (timing the new schedule) is
    set again."""
    store = Store(server.db_url)

    def fired() -> int | None:
        (row,) = [r for r in store.list_schedules() if r.name == name]
        assert row.id is not None
        if store.fires(row.id):
            return int(wait_until(lambda: server.get(f"/api/schedules/{name}")["last_job"]))
        now = datetime.now(UTC)
        if row.next_fire is None or row.next_fire.replace(tzinfo=UTC) > now:
            store.update_schedule(name, next_fire=now - timedelta(seconds=5))
        return None

    try:
        return int(wait_until(fired, timeout=60, what=f"schedule {name} to fire"))
    finally:
        store.close()


@pytest.fixture
def sched_server(start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path):
    inventory = write(tmp_path / "inv.ini", "[web]\nss1\n")
    books = tmp_path / "books"
    write(books / "file.yml", FILE_BOOK)
    write(
        books / "show.yml",
        """\
        name: show
        hosts: web
        tasks:
          - name: say
            shell: echo book says {{ colour | default('none') }}
        """,
    )
    server = start_server(inventory, "--playbooks", str(books))
    start_agent(server, "ss1")
    assert server.http.post("/api/templates", json=TEMPLATE).status_code == 201
    assert server.http.post("/api/templates", json=GUARDED).status_code == 201
    return server


def test_stored_schedules_crud_validation_pause_and_run_now(
    sched_server: ServerHandle, tmp_path: Path
) -> None:
    """Create, read, change, pause, resume, run now and delete a stored schedule (each
    audited); bad fields answer 400 naming the field and store nothing; file schedules are
    listed read-only beside them; only admins change schedules, viewers read them."""
    server = sched_server
    bad_cases = [
        ({"cron": "61 * * * *"}, "cron: invalid minute field"),
        ({"cron": ""}, "cron: is required"),
        ({"tz": "Mars/Olympus"}, "tz: unknown time zone 'Mars/Olympus'"),
        ({"template": "nope"}, "template: no template 'nope'"),
        ({"params": {"env": "moon"}}, "params.env:"),
        ({"params": {}}, "params.env:"),
        ({"kind": "shell"}, "kind: must be one of"),
        ({"kind": "playbook", "playbook": "missing.yml"}, "playbook:"),
        ({"kind": "adhoc", "command": "true"}, "pattern: is required"),
        ({"name": "no spaces"}, "name:"),
    ]
    for change, message in bad_cases:
        resp = server.http.post("/api/schedules", json={**NIGHTLY, **change})
        assert resp.status_code == 400, (change, resp.text)
        assert resp.json()["error"].startswith(message), (change, resp.json())
    assert server.http.get("/api/schedules/nightly").status_code == 404
    assert _audit(server, "schedule.create") == []

    made = server.http.post("/api/schedules", json=NIGHTLY)
    assert made.status_code == 201, made.text
    row = made.json()
    assert row["origin"] == "db" and not row["read_only"] and row["enabled"]
    assert row["target"] == {
        "kind": "template",
        "template": "say-env",
        "params": {"env": "prod"},
        "limit": "",
    }
    fires = [datetime.fromisoformat(t) for t in row["next_fires"]]
    assert len(fires) == 3 and fires == sorted(fires)
    assert all(
        (t.hour, t.minute, t.utcoffset())
        in ((2, 30, timedelta(hours=1)), (2, 30, timedelta(hours=2)))
        for t in fires
    )
    assert server.http.post("/api/schedules", json=NIGHTLY).status_code == 409
    (created,) = _audit(server, "schedule.create")
    assert created["actor"] == "admin" and created["detail"]["schedule"] == "nightly"

    listing = {s["name"]: s for s in server.get("/api/schedules")["schedules"]}
    assert listing["from-file"]["origin"] == "file" and listing["from-file"]["read_only"]
    assert len(listing["from-file"]["next_fires"]) == 3
    assert server.http.put("/api/schedules/from-file", json=NIGHTLY).status_code == 409
    assert server.http.delete("/api/schedules/from-file").status_code == 409

    viewer = user_client(server, "vic", "viewer")
    operator = user_client(server, "opal", "operator")
    assert viewer.get("/api/schedules/nightly").json()["name"] == "nightly"
    assert viewer.post("/api/schedules", json={**NIGHTLY, "name": "v"}).status_code == 403
    assert operator.put("/api/schedules/nightly", json=NIGHTLY).status_code == 403
    assert operator.delete("/api/schedules/nightly").status_code == 403
    assert viewer.post("/api/schedules/nightly/pause").status_code == 403

    bad_edit = server.http.put("/api/schedules/nightly", json={**NIGHTLY, "tz": "Nowhere/X"})
    assert bad_edit.status_code == 400 and bad_edit.json()["error"].startswith("tz:")
    edited = server.http.put(
        "/api/schedules/nightly", json={**NIGHTLY, "cron": "0 4 * * 1", "tz": "UTC"}
    )
    assert edited.status_code == 200, edited.text
    assert [datetime.fromisoformat(t).weekday() for t in edited.json()["next_fires"]] == [0] * 3
    assert _audit(server, "schedule.update")[0]["detail"]["cron"] == "0 4 * * 1"

    # a scoped operator: never resumes (a schedule fires with the server's authority), and
    # pauses or runs only a schedule whose hosts are all in the scope
    outsider = user_client(server, "otto", "operator", scope="elsewhere")
    assert outsider.post("/api/schedules/nightly/pause").status_code == 403
    assert outsider.post("/api/schedules/nightly/run").status_code == 403
    assert outsider.post("/api/schedules/nightly/resume").status_code == 403
    assert server.get("/api/schedules/nightly")["enabled"]
    assert {e["actor"] for e in _audit(server, "job.refused")} == {"otto"}
    outsider.close()

    paused = operator.post("/api/schedules/nightly/pause")
    assert paused.status_code == 200 and not paused.json()["enabled"]
    assert server.http.post("/api/schedules/nightly/resume").json()["enabled"]
    assert [e["actor"] for e in _audit(server, "schedule.disable")] == ["opal"]
    assert [e["actor"] for e in _audit(server, "schedule.enable")] == ["admin"]

    started = operator.post("/api/schedules/nightly/run")
    assert started.status_code == 201, started.text
    data = server.wait_job(started.json()["job"])
    assert data["job"]["state"] == "success" and data["job"]["source"] == "schedule nightly"
    lines = [ln["text"] for r in data["runs"] for ln in server.log_lines(r["id"])]
    assert lines == ["scheduled prod"]
    (ran,) = _audit(server, "schedule.run")
    assert ran["actor"] == "opal" and ran["detail"]["job"] == started.json()["job"]

    spec = write(
        tmp_path / "book.yml",
        """\
        name: book-nightly
        cron: "@daily"
        kind: playbook
        playbook: show.yml
        vars: {colour: blue}
        """,
    )
    out = server.cli("schedules", "create", "-f", str(spec))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "schedule book-nightly: created"
    listed = server.cli("schedules", "list")
    line = next(ln for ln in listed.stdout.splitlines() if ln.startswith("book-nightly"))
    assert line.split()[-1] == "db"
    shown = server.cli("schedules", "show", "book-nightly")
    assert "playbook: show.yml" in shown.stdout and "next_fires:" in shown.stdout
    assert server.cli("schedules", "pause", "book-nightly").stdout.strip() == (
        "schedule book-nightly: paused"
    )
    ran_cli = server.cli("schedules", "run", "book-nightly")
    assert ran_cli.returncode == 0, ran_cli.stderr
    book_job = server.wait_job(int(ran_cli.stdout.split()[-1]))
    assert book_job["job"]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(book_job["runs"][0]["id"])] == ["book says blue"]
    assert server.cli("schedules", "rm", "book-nightly").returncode == 0
    assert server.http.delete("/api/schedules/nightly").status_code == 200
    assert server.http.get("/api/schedules/nightly").status_code == 404
    assert {e["detail"]["schedule"] for e in _audit(server, "schedule.delete")} == {
        "nightly",
        "book-nightly",
    }
    for c in (viewer, operator):
        c.close()


def test_a_stored_schedule_fires_through_the_launch_path(sched_server: ServerHandle) -> None:
    """When its time comes, a stored ad hoc schedule runs as the schedule's job (source
    `schedule NAME`); a template with `approval: required` fired by a schedule waits for
    approval, which the schedule's creator may not give (another admin does)."""
    server = sched_server
    adhoc = {
        "name": "tick",
        "cron": "0 0 1 1 *",
        "kind": "adhoc",
        "pattern": "web",
        "command": "echo tick-tock",
    }
    guarded = {**NIGHTLY, "name": "guarded-nightly", "cron": "0 0 1 1 *", "template": "guarded"}
    for spec in (adhoc, guarded):
        assert server.http.post("/api/schedules", json=spec).status_code == 201
    tick = _due_now(server, "tick")
    data = server.wait_job(tick)
    assert data["job"]["source"] == "schedule tick" and data["job"]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(data["runs"][0]["id"])] == ["tick-tock"]
    waiting = _due_now(server, "guarded-nightly")
    job = server.get(f"/api/jobs/{waiting}")
    assert job["job"]["state"] == "awaiting approval" and job["runs"] == []
    assert server.get(f"/api/jobs/{waiting}/approval")["requested_by"] == "schedule"
    mine = server.http.post(f"/api/jobs/{waiting}/approve", json={"comment": "mine"})
    assert mine.status_code == 403, mine.text  # the schedule's creator stands for its requester
    assert "a schedule's creator may not approve" in mine.json()["error"]
    with user_client(server, "carol", "admin") as carol:
        approved = carol.post(f"/api/jobs/{waiting}/approve", json={"comment": "go"})
    assert approved.status_code == 200, approved.text  # starts as the schedule
    ran = server.wait_job(approved.json()["launched_job"])
    assert ran["job"]["state"] == "success" and ran["job"]["submitted_by"] == "schedule"
    (submitted,) = [e for e in _audit(server, "job.submit") if e["source"] == "schedule tick"]
    assert submitted["actor"] == "schedule"
    (fire,) = db_execute(
        server.db_url,
        "SELECT f.job_id FROM schedule_fire f JOIN schedule s ON s.id = f.schedule_id"
        " WHERE s.name = 'tick'",
    )
    assert fire[0] == tick


@pytest.mark.postgres
def test_a_schedule_made_through_the_api_fires_once_with_two_servers(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Two servers on one PostgreSQL, both ticking: a schedule made through the first one's
    API fires once (one fire record, one job), whichever server claims it."""
    url = postgres.new_database()
    inventory = write(tmp_path / "inv.ini", "[web]\ntwo1\n")
    first = start_server(inventory, "--db", url, state_dir=tmp_path / "a")
    second_state = tmp_path / "b"
    second_state.mkdir()
    for name in ("client_key", "client_key.pub"):
        shutil.copy(first.state_dir / name, second_state / name)
    second = start_server(inventory, "--db", url, state_dir=second_state)
    start_agent(first, "two1")
    spec = {
        "name": "once",
        "cron": "0 0 1 1 *",
        "kind": "adhoc",
        "pattern": "web",
        "command": "echo once",
    }
    assert first.http.post("/api/schedules", json=spec).status_code == 201
    assert second.get("/api/schedules/once")["origin"] == "db"
    job_id = _due_now(first, "once")
    assert second.get("/api/schedules/once")["last_job"] == job_id
    assert first.wait_job(job_id)["job"]["state"] == "success"
    # both servers read the fire time it moved on to (next year), so neither fires again
    year = datetime.now(UTC).year + 1
    for server in (first, second):
        nxt = server.get("/api/schedules/once")["next_fire"]
        assert datetime.fromisoformat(nxt).year == year
    fires = db_execute(url, "SELECT job_id, server FROM schedule_fire")
    assert [f[0] for f in fires] == [job_id]
    jobs = db_execute(url, "SELECT id FROM job WHERE source = 'schedule once'")
    assert [j[0] for j in jobs] == [job_id]
