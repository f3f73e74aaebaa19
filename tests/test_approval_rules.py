"""Approval rules through a real server and real agents: admins add, pause, resume and remove
them through the API and the CLI (each audited in its transaction; a bad pattern refused naming
the wrong part, nothing stored; other roles refused 403); the server's `approval_hosts` is shown
as a read-only rule. Every kind of submission whose hosts a rule selects — an ad hoc run, a
playbook, a template launch, a stored schedule's fire — waits `awaiting approval` until an admin
other than the requester approves it, and then runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, db_execute, user_client
from tests.test_stored_schedules import _due_now


def _audit(server: ServerHandle, action: str) -> list[dict[str, Any]]:
    events = server.get("/api/audit", action=action)["events"]
    return [e for e in events if e["action"] == action]


def _rules(server: ServerHandle) -> list[dict[str, Any]]:
    return list(server.get("/api/approval-rules")["rules"])


@pytest.fixture
def rules_server(start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path):
    inventory = write(tmp_path / "inv.ini", "[web]\nar1\n[prod]\nar2\n[legacy]\nar3\n")
    books = tmp_path / "books"
    write(
        books / "deploy.yml",
        """\
        name: deploy
        hosts: prod
        tasks:
          - name: say
            shell: echo deployed {{ what | default('all') }}
        """,
    )
    write(
        books / "nightly.yml",
        """\
        name: nightly
        hosts: prod
        schedule: "0 0 1 1 *"
        tasks:
          - name: say
            shell: echo nightly-from-file
        """,
    )
    server = start_server(inventory, "--playbooks", str(books), "--approval-hosts", "legacy")
    start_agent(server, "ar1")
    start_agent(server, "ar2")
    return server


def test_admins_manage_rules_through_the_api_and_the_cli_audited(
    rules_server: ServerHandle,
) -> None:
    """Add (API and CLI), list, pause, resume and remove rules, each change audited with the
    rule's id; a bad pattern is a 400 naming the wrong part and stores nothing; the server's
    `approval_hosts` is listed read-only and cannot be removed (409); an operator, a viewer
    and an auditor may list but not add, pause or remove (403)."""
    server = rules_server
    (fixed,) = _rules(server)
    assert fixed["id"] == "server" and fixed["pattern"] == "legacy" and fixed["read_only"]

    before = db_execute(server.db_url, "SELECT count(*) FROM approval_rule")[0][0]
    for pattern, message in (
        ("web[", "pattern: unbalanced '['"),
        ("web:&", "'&' in host pattern 'web:&' needs a host or group name"),
        ("web[7]", "is out of range"),
        ("", "pattern is required"),
    ):
        bad = server.http.post("/api/approval-rules", json={"pattern": pattern})
        assert bad.status_code == 400, (pattern, bad.text)
        assert message in bad.json()["error"], (pattern, bad.json())
    bad_note = server.http.post("/api/approval-rules", json={"pattern": "prod", "note": 5})
    assert bad_note.status_code == 400 and "note must be text" in bad_note.json()["error"]
    assert db_execute(server.db_url, "SELECT count(*) FROM approval_rule")[0][0] == before
    assert _audit(server, "approval-rule.create") == []

    made = server.http.post(
        "/api/approval-rules", json={"pattern": "prod", "note": "production: two people"}
    )
    assert made.status_code == 201, made.text
    rule = made.json()
    assert rule["pattern"] == "prod" and rule["created_by"] == "admin" and not rule["paused"]
    (created,) = _audit(server, "approval-rule.create")
    assert created["actor"] == "admin"
    assert created["detail"]["rule"] == rule["id"] and created["detail"]["pattern"] == "prod"

    added = server.cli("approvals", "rules", "add", "web:&ar1", "--note", "the first web host")
    assert added.returncode == 0, added.stderr
    assert "needs approval" in added.stdout
    listed = server.cli("approvals", "rules", "list")
    assert listed.returncode == 0, listed.stderr
    assert "server setting" in listed.stdout and "legacy" in listed.stdout
    assert "web:&ar1" in listed.stdout and "the first web host" in listed.stdout
    web_rule = [r for r in _rules(server) if r["pattern"] == "web:&ar1"][0]

    for who, role in (("opal", "operator"), ("vic", "viewer"), ("aud", "auditor")):
        client = user_client(server, who, role)
        assert client.get("/api/approval-rules").status_code == 200
        assert client.post("/api/approval-rules", json={"pattern": "web"}).status_code == 403
        paused = client.patch(f"/api/approval-rules/{rule['id']}", json={"paused": True})
        assert paused.status_code == 403
        assert client.delete(f"/api/approval-rules/{rule['id']}").status_code == 403
        client.close()
    assert len(_rules(server)) == 3

    fixed_gone = server.http.delete("/api/approval-rules/server")
    assert fixed_gone.status_code == 409 and "approval_hosts" in fixed_gone.json()["error"]
    assert server.cli("approvals", "rules", "remove", "server").returncode != 0
    missing = server.http.delete("/api/approval-rules/9999")
    assert missing.status_code == 404 and "no approval rule 9999" in missing.json()["error"]

    assert server.cli("approvals", "rules", "pause", str(web_rule["id"])).returncode == 0
    assert [r["paused"] for r in _rules(server) if r["id"] == web_rule["id"]] == [True]
    resumed = server.http.patch(f"/api/approval-rules/{web_rule['id']}", json={"paused": False})
    assert resumed.status_code == 200 and resumed.json()["paused"] is False
    removed = server.cli("approvals", "rules", "remove", str(web_rule["id"]))
    assert removed.returncode == 0 and "removed" in removed.stdout
    assert [r["pattern"] for r in _rules(server)] == ["legacy", "prod"]
    (paused_event,) = _audit(server, "approval-rule.pause")
    (resumed_event,) = _audit(server, "approval-rule.resume")
    (deleted,) = _audit(server, "approval-rule.delete")
    for event in (paused_event, resumed_event, deleted):
        assert event["detail"]["rule"] == web_rule["id"] and event["actor"] == "admin"
    assert deleted["detail"]["pattern"] == "web:&ar1"


def test_a_rule_holds_every_kind_of_submission_until_an_admin_approves(
    rules_server: ServerHandle, tmp_path: Path
) -> None:
    """With a rule on `prod`: an ad hoc run (API and CLI), a playbook, a template launch, a
    stored schedule's fire and a file schedule run now on a prod host each wait `awaiting
    approval` with no runs (the request audited with the rule); the requester and a non-admin may not approve; an admin's
    approval starts the job as the requester (the schedule's as the schedule) and it runs. A run
    on other hosts does not wait, nor one on prod once the rule is paused; a held run that
    carries an inline secret cannot wait (409, nothing stored)."""
    server = rules_server
    made = server.http.post("/api/approval-rules", json={"pattern": "prod"})
    assert made.status_code == 201, made.text
    rule_id = made.json()["id"]
    operator = user_client(server, "opal", "operator")
    carol = user_client(server, "carol", "admin")
    other_op = user_client(server, "otto", "operator")

    free = operator.post("/api/jobs", json={"pattern": "web", "command": "echo free"})
    assert free.status_code == 201, free.text
    assert server.wait_job(free.json()["job"]["id"])["job"]["state"] == "success"

    held = operator.post("/api/jobs", json={"pattern": "web,prod", "command": "echo held-adhoc"})
    assert held.status_code == 202, held.text
    job = held.json()["job"]
    assert job["state"] == "awaiting approval" and held.json()["runs"] == []
    assert held.json()["approval"]["rules"] == ["prod"]
    assert held.json()["approval"]["command"] == "echo held-adhoc"
    (requested,) = _audit(server, "approval.request")
    assert requested["actor"] == "opal" and requested["detail"]["rules"] == ["prod"]
    assert requested["detail"]["kind"] == "adhoc"

    jobs_before = len(db_execute(server.db_url, "SELECT id FROM job"))
    secret = operator.post(
        "/api/jobs",
        json={"pattern": "prod", "command": "echo $TOK", "secrets": {"TOK": "s3cr3t-value"}},
    )
    assert secret.status_code == 409 and "cannot wait" in secret.json()["error"]
    assert len(db_execute(server.db_url, "SELECT id FROM job")) == jobs_before

    own = operator.post(f"/api/jobs/{job['id']}/approve", json={})
    assert own.status_code == 403 and "requester" in own.json()["error"]
    not_admin = other_op.post(f"/api/jobs/{job['id']}/approve", json={})
    assert not_admin.status_code == 403 and "only an admin" in not_admin.json()["error"]
    approved = carol.post(f"/api/jobs/{job['id']}/approve", json={"comment": "fine"})
    assert approved.status_code == 200, approved.text
    launched = approved.json()["launched_job"]
    ran = server.wait_job(launched)
    assert ran["job"]["state"] == "success" and ran["job"]["submitted_by"] == "opal"
    assert sorted(r["host"] for r in ran["runs"]) == ["ar1", "ar2"]
    assert server.get(f"/api/jobs/{job['id']}")["job"]["state"] == "approved"
    (approve_event,) = _audit(server, "approval.approve")
    assert approve_event["actor"] == "carol" and approve_event["detail"]["rules"] == ["prod"]

    cli = server.cli("run", "ar2", "-a", "echo from-cli")
    assert cli.returncode == 0, cli.stderr
    assert "awaiting approval (approval rule prod)" in cli.stdout

    played = server.cli("play", str(tmp_path / "books" / "deploy.yml"), "-e", "what=api")
    assert played.returncode == 0, played.stdout + played.stderr
    assert "awaiting approval" in played.stdout
    book_job = int(played.stdout.split("job ")[1].split(":")[0])
    own_cli = server.cli("approve", str(book_job), "-m", "mine")  # the CLI's user asked
    assert own_cli.returncode != 0 and "their own launch" in own_cli.stderr
    decided = carol.post(f"/api/jobs/{book_job}/approve", json={"comment": "ship it"})
    assert decided.status_code == 200, decided.text
    book_launched = server.get(f"/api/jobs/{book_job}/approval")["launched_job"]
    book = server.wait_job(book_launched)
    assert book["job"]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(book["runs"][0]["id"])] == ["deployed api"]

    template = {"name": "say", "command": "echo said", "pattern": "prod"}
    assert server.http.post("/api/templates", json=template).status_code == 201
    launch = operator.post("/api/templates/say/launch", json={"params": {}})
    assert launch.status_code == 202, launch.text
    assert launch.json()["approval"]["rules"] == ["prod"]

    schedule = {"name": "tick", "cron": "0 0 1 1 *", "kind": "adhoc", "pattern": "prod"}
    schedule["command"] = "echo tick-tock"
    assert server.http.post("/api/schedules", json=schedule).status_code == 201
    fired = _due_now(server, "tick")
    waiting = server.get(f"/api/jobs/{fired}")
    assert waiting["job"]["state"] == "awaiting approval" and waiting["runs"] == []
    assert server.get(f"/api/jobs/{fired}/approval")["requested_by"] == "schedule"
    started = carol.post(f"/api/jobs/{fired}/approve", json={"comment": "ok"})
    assert started.status_code == 200, started.text
    tick = server.wait_job(started.json()["launched_job"])
    assert tick["job"]["state"] == "success" and tick["job"]["submitted_by"] == "schedule"
    assert [ln["text"] for ln in server.log_lines(tick["runs"][0]["id"])] == ["tick-tock"]

    now = carol.post("/api/schedules/nightly/run")  # a schedule read from a playbook file
    assert now.status_code == 201, now.text
    from_file = now.json()["job"]
    assert server.get(f"/api/jobs/{from_file}")["job"]["state"] == "awaiting approval"
    assert server.get(f"/api/jobs/{from_file}/approval")["schedule"] == "nightly"
    started = server.http.post(f"/api/jobs/{from_file}/approve", json={"comment": "ok"})
    assert started.status_code == 200, started.text
    nightly = server.wait_job(started.json()["launched_job"])
    assert nightly["job"]["state"] == "success" and nightly["job"]["submitted_by"] == "schedule"
    assert [ln["text"] for ln in server.log_lines(nightly["runs"][0]["id"])] == [
        "nightly-from-file"
    ]

    paused = server.http.patch(f"/api/approval-rules/{rule_id}", json={"paused": True})
    assert paused.status_code == 200
    direct = operator.post("/api/jobs", json={"pattern": "prod", "command": "echo direct"})
    assert direct.status_code == 201, direct.text
    server.wait_job(direct.json()["job"]["id"])
    assert "s3cr3t-value" not in json.dumps(server.get("/api/audit"))
    for c in (operator, carol, other_op):
        c.close()


def test_a_held_submission_is_not_shown_to_a_user_whose_scope_lacks_its_hosts(
    rules_server: ServerHandle,
) -> None:
    """A submission an approval rule holds has no runs to judge its hosts by: a user with a
    scope sees only their own (as the dashboard shows them), so an operator scoped to `web` sees
    neither the command nor the hosts of another user's held run on `prod`, in the list of
    approvals (API and console) or by its job id (404); an unscoped admin sees it."""
    server = rules_server
    assert server.http.post("/api/approval-rules", json={"pattern": "prod"}).status_code == 201
    held = server.http.post("/api/jobs", json={"pattern": "prod", "command": "echo hidden-cmd"})
    assert held.status_code == 202, held.text
    job_id = held.json()["job"]["id"]
    scoped = user_client(server, "sid", "operator", scope="web")
    mine = scoped.post("/api/jobs", json={"pattern": "web", "command": "echo mine"})
    assert mine.status_code == 201, mine.text

    for state in ("awaiting", "all"):
        listed = scoped.get("/api/approvals", params={"state": state})
        assert listed.status_code == 200, listed.text
        assert "hidden-cmd" not in listed.text and job_id not in [
            a["job"] for a in listed.json()["approvals"]
        ]
    one = scoped.get(f"/api/jobs/{job_id}/approval")
    assert one.status_code == 404 and "hidden-cmd" not in one.text
    assert scoped.get(f"/api/jobs/{job_id}").status_code == 404

    console = Browserless(server)
    assert console.login("sid", "long-enough-1").status_code == 303
    page = console.http.get("/approvals")
    assert page.status_code == 200 and "hidden-cmd" not in page.text

    admin_view = server.get("/api/approvals")["approvals"]
    assert [a["command"] for a in admin_view if a["job"] == job_id] == ["echo hidden-cmd"]
    assert server.get(f"/api/jobs/{job_id}/approval")["command"] == "echo hidden-cmd"
    scoped.close()
    console.http.close()


def test_a_rule_id_out_of_range_is_not_found(rules_server: ServerHandle) -> None:
    """A rule id no rule can have (beyond the id column's range, or not a number) is a 404
    naming it, through the API and the console, and nothing changes."""
    server = rules_server
    made = server.http.post("/api/approval-rules", json={"pattern": "prod"})
    assert made.status_code == 201, made.text
    for bad in ("99999999999999999999", "3000000000", "-1", "0", "x"):
        removed = server.http.delete(f"/api/approval-rules/{bad}")
        assert removed.status_code == 404, (bad, removed.text)
        assert "no approval rule" in removed.json()["error"] and bad in removed.json()["error"]
        paused = server.http.patch(f"/api/approval-rules/{bad}", json={"paused": True})
        assert paused.status_code == 404, (bad, paused.text)
    console = Browserless(server)
    assert console.login("admin", admin_password(server)).status_code == 303
    page = console.form_post("/admin/approval-rules/99999999999999999999/pause", {})
    assert page.status_code == 404, page.text
    assert [(r["pattern"], r["paused"]) for r in _rules(server)] == [
        ("legacy", False),
        ("prod", False),
    ]
    console.http.close()


def test_a_template_launch_a_rule_holds_is_decided_by_an_admin_only(
    rules_server: ServerHandle,
) -> None:
    """A template whose own approvers name a non-admin, launched onto a host an approval rule
    selects: the rule's hold is an admin's to decide, so that approver is refused (403, audited,
    `may_decide` false for them) and an admin other than the requester approves it."""
    server = rules_server
    assert server.http.post("/api/approval-rules", json={"pattern": "prod"}).status_code == 201
    template = {
        "name": "say-prod",
        "command": "echo said-prod",
        "pattern": "prod",
        "launch": {"roles": ["operator"]},
        "approvers": {"users": ["vera"]},
    }
    assert server.http.post("/api/templates", json=template).status_code == 201
    operator = user_client(server, "opal", "operator")
    vera = user_client(server, "vera", "operator")
    carol = user_client(server, "carol", "admin")
    launch = operator.post("/api/templates/say-prod/launch", json={"params": {}})
    assert launch.status_code == 202, launch.text
    job_id = launch.json()["job"]["id"]
    assert launch.json()["approval"]["rules"] == ["prod"]

    (listed,) = [a for a in vera.get("/api/approvals").json()["approvals"] if a["job"] == job_id]
    assert listed["may_decide"] is False
    refused = vera.post(f"/api/jobs/{job_id}/approve", json={"comment": "mine to decide?"})
    assert refused.status_code == 403 and "only an admin" in refused.json()["error"], refused.text
    rejected = vera.post(f"/api/jobs/{job_id}/reject", json={"comment": "no"})
    assert rejected.status_code == 403, rejected.text
    assert [e["actor"] for e in _audit(server, "approval.approve.refused")] == ["vera"]
    console = Browserless(server)
    assert console.login("vera", "long-enough-1").status_code == 303
    page = console.http.get("/approvals")
    assert page.status_code == 200 and f"/approvals/{job_id}/approve" not in page.text
    assert "An admin decides what an approval rule holds." in page.text
    assert "You do not hold the approver right" not in page.text
    console.http.close()
    assert server.get(f"/api/jobs/{job_id}")["job"]["state"] == "awaiting approval"

    (as_admin,) = [a for a in carol.get("/api/approvals").json()["approvals"] if a["job"] == job_id]
    assert as_admin["may_decide"] is True
    approved = carol.post(f"/api/jobs/{job_id}/approve", json={"comment": "ok"})
    assert approved.status_code == 200, approved.text
    assert server.wait_job(approved.json()["launched_job"])["job"]["state"] == "success"
    for c in (operator, vera, carol):
        c.close()


def test_a_held_submission_in_json_format_prints_json_only(
    rules_server: ServerHandle, tmp_path: Path
) -> None:
    """`run --format json` and `play --format json` of a submission a rule holds print one JSON
    document (the job awaiting approval and its request) on stdout; the note that it waits goes
    to stderr."""
    server = rules_server
    assert server.http.post("/api/approval-rules", json={"pattern": "prod"}).status_code == 201
    ran = server.cli("run", "ar2", "-a", "echo held-json", "--format", "json")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    data = json.loads(ran.stdout)
    assert data["job"]["state"] == "awaiting approval" and data["runs"] == []
    assert data["approval"]["rules"] == ["prod"]
    assert "awaiting approval (approval rule prod)" in ran.stderr
    played = server.cli("play", str(tmp_path / "books" / "deploy.yml"), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    assert json.loads(played.stdout)["job"]["state"] == "awaiting approval"
    assert "awaiting approval" in played.stderr


def test_a_held_schedule_fire_whose_playbook_changed_is_refused_on_approval(
    rules_server: ServerHandle, tmp_path: Path
) -> None:
    """A file schedule's fire held by a rule, its playbook edited before the approval: the
    approval does not run the edited playbook (409 naming the change, audited
    `approval.launch_failed`), as for a held playbook."""
    server = rules_server
    assert server.http.post("/api/approval-rules", json={"pattern": "prod"}).status_code == 201
    now = server.http.post("/api/schedules/nightly/run")
    assert now.status_code == 201, now.text
    job_id = now.json()["job"]
    assert server.get(f"/api/jobs/{job_id}")["job"]["state"] == "awaiting approval"
    book = tmp_path / "books" / "nightly.yml"
    book.write_text(book.read_text().replace("nightly-from-file", "edited-after-the-request"))
    carol = user_client(server, "carol", "admin")
    approved = carol.post(f"/api/jobs/{job_id}/approve", json={"comment": "ok"})
    assert approved.status_code == 409, approved.text
    assert "changed since the request" in approved.json()["error"]
    (failed,) = _audit(server, "approval.launch_failed")
    assert failed["detail"]["job"] == job_id
    assert "edited-after-the-request" not in json.dumps(server.get("/api/jobs"))
    carol.close()
