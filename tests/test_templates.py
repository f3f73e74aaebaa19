"""Job templates through a real server and a real agent: admins make, change and delete them
(audited), bad definitions and bad values are refused naming the part, a launch from the API or
the CLI runs with its parameters quoted, whom a template allows (and their scope) decides who may
launch it."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import REPO, ServerHandle, db_execute, easytask_cmd, user_client, wait_until
from tests.test_secret_sweep import _database_hits, _file_hits

ECHO = {
    "name": "echo-path",
    "kind": "command",
    "description": "say a path",
    "command": "echo got {{ params.path | quote }} {{ params.count | quote }} {{ params.env | quote }}",
    "pattern": "web",
    "timeout": "30s",
    "params": [
        {"name": "path", "type": "text", "required": True, "regex": "[^\\n]{1,200}"},
        {"name": "count", "type": "number", "min": 1, "max": 3, "default": 1},
        {"name": "env", "type": "choice", "choices": ["staging", "prod"], "default": "staging"},
        {"name": "dry", "type": "boolean"},
    ],
    "launch": {"roles": ["operator"], "users": ["vera"]},
}


def _audit(server: ServerHandle, action: str) -> list[dict[str, object]]:
    return list(server.get("/api/audit", action=action)["events"])


@pytest.fixture
def tpl_server(start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path):
    inventory = write(tmp_path / "inv.ini", "[web]\ntp1\n[db]\ntp2\n")
    books = tmp_path / "books"
    write(
        books / "show.yml",
        """\
        name: show
        hosts: web
        tasks:
          - name: say
            shell: echo env is {{ params.env | quote }}
        """,
    )
    server = start_server(inventory, "--playbooks", str(books))
    start_agent(server, "tp1")
    return server


def _lines(server: ServerHandle, job: dict[str, object]) -> list[str]:
    runs = server.wait_job(int(job["id"]))["runs"]  # type: ignore[call-overload]
    return [ln["text"] for r in runs for ln in server.log_lines(r["id"])]


def test_admin_manages_templates_and_bad_ones_are_refused(tpl_server: ServerHandle) -> None:
    """Create, show, list, replace and delete a template (API and CLI), each audited; a
    definition that pastes a parameter unquoted, names an unknown type or a bad default is
    refused with 400 naming the part, and nothing is stored; only admins manage templates."""
    server = tpl_server
    made = server.http.post("/api/templates", json=ECHO)
    assert made.status_code == 201, made.text
    assert made.json()["params"][1] == {
        "name": "count",
        "type": "number",
        "required": False,
        "default": 1,
        "min": 1.0,
        "max": 3.0,
    }
    again = server.http.post("/api/templates", json=ECHO)
    assert again.status_code == 409 and "already exists" in again.json()["error"]

    bad = {
        "unquoted": (
            {**ECHO, "name": "b1", "command": "echo {{ params.path }}"},
            "params.path must be written {{ params.path | quote }}",
        ),
        "in-set": (
            {**ECHO, "name": "b2", "command": "{% set p = params.path %}echo {{ p | quote }}"},
            "params.path must be written",
        ),
        "whole": ({**ECHO, "name": "b3", "command": "echo {{ params | quote }}"}, "not params"),
        "unknown-param": (
            {**ECHO, "name": "b4", "command": "echo {{ params.nope | quote }}"},
            "no parameter 'nope'",
        ),
        "type": (
            {**ECHO, "name": "b5", "params": [{"name": "x", "type": "date"}]},
            "parameter x: type must be one of",
        ),
        "default": (
            {
                **ECHO,
                "name": "b6",
                "params": [{"name": "count", "type": "number", "max": 2, "default": 5}],
            },
            "parameter count: default: must be at most 2",
        ),
        "choices": (
            {**ECHO, "name": "b7", "params": [{"name": "env", "type": "choice"}]},
            "parameter env: a choice parameter needs a list of choices",
        ),
        "regex": (
            {**ECHO, "name": "b8", "params": [{"name": "path", "regex": "("}]},
            "parameter path: regex:",
        ),
        "role": ({**ECHO, "name": "b9", "launch": {"roles": ["root"]}}, "launch.roles"),
        "playbook": (
            {"name": "b10", "kind": "playbook", "playbook": "missing.yml"},
            "playbook: no playbook 'missing.yml'",
        ),
    }
    for what, (payload, message) in bad.items():
        answer = server.http.post("/api/templates", json=payload)
        assert answer.status_code == 400, (what, answer.text)
        assert message in answer.json()["error"], (what, answer.json())
    names = [t["name"] for t in server.get("/api/templates")["templates"]]
    assert names == ["echo-path"]

    changed = server.http.put(
        "/api/templates/echo-path", json={**ECHO, "description": "say it again"}
    )
    assert changed.status_code == 200 and changed.json()["description"] == "say it again"
    renamed = server.http.put("/api/templates/echo-path", json={**ECHO, "name": "other"})
    assert renamed.status_code == 400 and "keeps its name" in renamed.json()["error"]

    operator = user_client(server, "opal", "operator")
    assert operator.post("/api/templates", json={**ECHO, "name": "mine"}).status_code == 403
    assert operator.delete("/api/templates/echo-path").status_code == 403
    listed = operator.get("/api/templates").json()["templates"]
    assert [(t["name"], t["may_launch"]) for t in listed] == [("echo-path", True)]
    operator.close()

    with open(server.state_dir / "tpl.yml", "w") as fh:
        fh.write("name: cli-made\ncommand: uptime\npattern: web\nlaunch: {roles: []}\n")
    created = server.cli("templates", "create", "-f", str(server.state_dir / "tpl.yml"))
    assert created.returncode == 0 and "template cli-made: created" in created.stdout
    shown = server.cli("templates", "show", "cli-made")
    assert shown.returncode == 0 and "command: uptime" in shown.stdout
    listed_cli = server.cli("templates", "list")
    assert "cli-made" in listed_cli.stdout and "echo-path" in listed_cli.stdout
    removed = server.cli("templates", "rm", "cli-made")
    assert removed.returncode == 0 and "removed" in removed.stdout
    gone = server.cli("templates", "rm", "cli-made")
    assert gone.returncode == 2 and "no template 'cli-made'" in gone.stderr

    actions = [e["action"] for e in server.get("/api/audit")["events"]]
    assert actions.count("template.create") == 2 and actions.count("template.update") == 1
    assert actions.count("template.delete") == 1
    (stored,) = db_execute(server.db_url, "SELECT name FROM job_template")
    assert stored == ("echo-path",)


def test_launch_quotes_parameters_and_checks_who_may(
    tpl_server: ServerHandle, tmp_path: Path
) -> None:
    """A launch from the API and from the CLI runs the command with each value one shell word:
    `x; touch FILE` is echoed, never run; bad values get 400 naming the parameter and nothing
    runs; a user the template does not name gets 403 (audited); a scoped operator whose scope
    does not cover the template's pattern gets 403 even with a limit inside it; a credential
    parameter hands the command the credential's variable, masked in the output; a playbook
    template gets its values as `params`."""
    server = tpl_server
    assert server.http.post("/api/templates", json=ECHO).status_code == 201
    marker = tmp_path / "pwned"
    evil = f"x; touch {marker}"
    operator = user_client(server, "opal", "operator")
    started = operator.post(
        "/api/templates/echo-path/launch", json={"params": {"path": evil, "count": "2"}}
    )
    assert started.status_code == 201, started.text
    job = started.json()["job"]
    assert _lines(server, job) == [f"got {evil} 2 staging"]
    assert not marker.exists()
    (submitted,) = _audit(server, "job.submit")
    assert submitted["actor"] == "opal"
    assert submitted["detail"]["template"] == {  # type: ignore[index]
        "name": "echo-path",
        "params": {"path": evil, "count": 2, "env": "staging", "dry": False},
    }

    cli = server.cli(
        "launch", "echo-path", "-p", f"path={evil}", "-p", "env=prod", "-l", "tp1", "--follow"
    )
    assert cli.returncode == 0, cli.stderr
    assert f"got {evil} 1 prod" in cli.stdout
    assert not marker.exists()

    jobs_before = len(db_execute(server.db_url, "SELECT id FROM job"))
    bad = {
        "count": ({"path": "a", "count": 9}, "parameter count: must be at most 3"),
        "path": ({}, "parameter path: is required"),
        "env": ({"path": "a", "env": "dev"}, "parameter env: must be one of staging, prod"),
        "dry": ({"path": "a", "dry": "maybe"}, "parameter dry: must be true or false"),
        "extra": ({"path": "a", "nope": 1}, "parameter nope: no such parameter"),
    }
    for what, (params, message) in bad.items():
        answer = operator.post("/api/templates/echo-path/launch", json={"params": params})
        assert answer.status_code == 400, (what, answer.text)
        assert message in answer.json()["error"], (what, answer.json())
    cli_bad = server.cli("launch", "echo-path", "-p", "path=a", "-p", "count=zero")
    assert cli_bad.returncode == 2 and "parameter count: must be a number" in cli_bad.stderr
    assert len(db_execute(server.db_url, "SELECT id FROM job")) == jobs_before

    viewer = user_client(server, "vic", "viewer")
    refused = viewer.post("/api/templates/echo-path/launch", json={"params": {"path": "a"}})
    assert refused.status_code == 403 and "vic may not launch" in refused.json()["error"]
    vera = user_client(server, "vera", "viewer")  # named by the template: may launch
    allowed = vera.post("/api/templates/echo-path/launch", json={"params": {"path": "v"}})
    assert allowed.status_code == 201, allowed.text
    server.wait_job(allowed.json()["job"]["id"])

    wide = {**ECHO, "name": "everywhere", "pattern": "all"}
    assert server.http.post("/api/templates", json=wide).status_code == 201
    scoped = user_client(server, "scot", "operator", scope="web")
    outside = scoped.post(
        "/api/templates/everywhere/launch", json={"params": {"path": "a"}, "limit": "tp1"}
    )
    assert outside.status_code == 403 and "outside your scope" in outside.json()["error"]
    inside = scoped.post("/api/templates/echo-path/launch", json={"params": {"path": "s"}})
    assert inside.status_code == 201, inside.text
    server.wait_job(inside.json()["job"]["id"])
    refusals = [e["detail"] for e in _audit(server, "job.refused")]
    assert {"kind": "template", "template": "echo-path", "role": "viewer"} in refusals
    assert any(r.get("template") == "everywhere" and r["outside"] == ["tp2"] for r in refusals)  # type: ignore[union-attr]

    value = f"tok-{secrets.token_hex(8)}"
    assert server.cli("secrets", "set", "api-token", input=value).returncode == 0
    with_secret = {
        "name": "use-token",
        "command": 'echo "{{ params.tok | quote }}=${{ params.tok | quote }}"',
        "pattern": "web",
        "params": [{"name": "tok", "type": "credential", "required": True}],
    }
    bad_quote = server.http.post(
        "/api/templates",
        json={**with_secret, "command": 'echo "${{ params.tok }}"'},
    )
    assert bad_quote.status_code == 400
    with_secret["command"] = "printenv {{ params.tok | quote }}"
    assert server.http.post("/api/templates", json=with_secret).status_code == 201
    used = operator.post("/api/templates/use-token/launch", json={"params": {"tok": "api-token"}})
    assert used.status_code == 201, used.text
    assert _lines(server, used.json()["job"]) == ["****"]
    missing = operator.post("/api/templates/use-token/launch", json={"params": {"tok": "nope"}})
    assert missing.status_code == 404 and "no credential 'nope'" in missing.json()["error"]

    script = {
        "name": "script-path",
        "script": '#!/bin/sh\necho "arg=$1 env=$PARAM_PATH n=$#"\n',
        "args": "{{ params.path | quote }}",
        "pattern": "web",
        "params": [{"name": "path", "required": True}],
    }
    unquoted_args = server.http.post(
        "/api/templates", json={**script, "name": "s2", "args": "{{ params.path }}"}
    )
    assert (
        unquoted_args.status_code == 400
        and "args: params.path must be written" in (unquoted_args.json()["error"])
    )
    assert server.http.post("/api/templates", json=script).status_code == 201
    scripted = operator.post("/api/templates/script-path/launch", json={"params": {"path": evil}})
    assert scripted.status_code == 201, scripted.text
    assert _lines(server, scripted.json()["job"]) == [f"arg={evil} env={evil} n=1"]
    assert not marker.exists()

    counter = tmp_path / "attempts"
    flaky = {
        "name": "flaky",
        "command": (
            f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; "
            "echo attempt $((n+1)) {{ params.tag | quote }}; [ $n -ge 2 ]"
        ),
        "pattern": "web",
        "retries": 2,
        "retry_delay": "0s",
        "timeout": "30s",
        "params": [{"name": "tag", "default": "a b"}],
    }
    assert server.http.post("/api/templates", json=flaky).status_code == 201
    retried = operator.post("/api/templates/flaky/launch", json={"params": {}})
    assert retried.status_code == 201, retried.text
    done = server.wait_job(retried.json()["job"]["id"])
    assert done["job"]["state"] == "success"
    assert [(r["attempt"], r["state"]) for r in done["runs"]] == [
        (1, "failed"),
        (2, "failed"),
        (3, "success"),
    ]
    assert server.log_lines(done["runs"][2]["id"])[0]["text"] == "attempt 3 a b"

    book = {"name": "show-env", "kind": "playbook", "playbook": "show.yml"}
    book["params"] = [{"name": "env", "type": "choice", "choices": ["a b", "c"]}]  # type: ignore[assignment]
    assert server.http.post("/api/templates", json=book).status_code == 201
    played = operator.post("/api/templates/show-env/launch", json={"params": {"env": "a b"}})
    assert played.status_code == 201, played.text
    assert _lines(server, played.json()["job"]) == ["env is a b"]
    assert value not in json.dumps(server.get("/api/audit"))
    for c in (operator, viewer, vera, scoped):
        c.close()


def test_a_retried_command_template_gets_its_credential_on_every_attempt(
    tpl_server: ServerHandle, tmp_path: Path
) -> None:
    """A command template with retries and a credential parameter: the command fails on its first
    attempt and succeeds on its second, and both attempts see the credential in their environment
    (each prints a hash of it, the same as the server's); the value is masked in the output and the
    stored command, named (never valued) in the audit event, in no table and no file of either
    state dir once the job ended. A credential scoped away from the hosts is refused (403)."""
    server = tpl_server
    value = f"rt-{secrets.token_hex(8)}"
    assert server.cli("secrets", "set", "deploy-token", input=value).returncode == 0
    counter = tmp_path / "cred-attempts"
    template = {
        "name": "flaky-cred",
        "command": (
            f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; "
            "echo attempt $((n+1)) $(printenv {{ params.tok | quote }} | sha256sum | cut -c1-16); "
            "printenv {{ params.tok | quote }}; [ $n -ge 1 ]"
        ),
        "pattern": "web",
        "retries": 2,
        "retry_delay": "0s",
        "timeout": "30s",
        "params": [{"name": "tok", "type": "credential", "required": True}],
    }
    made = server.http.post("/api/templates", json=template)
    assert made.status_code == 201, made.text
    operator = user_client(server, "otto", "operator")
    started = operator.post(
        "/api/templates/flaky-cred/launch", json={"params": {"tok": "deploy-token"}}
    )
    assert started.status_code == 201, started.text
    done = server.wait_job(started.json()["job"]["id"])
    assert done["job"]["state"] == "success"
    assert [(r["attempt"], r["state"]) for r in done["runs"]] == [(1, "failed"), (2, "success")]
    digest = hashlib.sha256(f"{value}\n".encode()).hexdigest()[:16]
    for attempt, run in enumerate(done["runs"], start=1):
        texts = [ln["text"] for ln in server.log_lines(run["id"])]
        assert texts == [f"attempt {attempt} {digest}", "****"], texts
        assert value not in run["command"] and "DEPLOY_TOKEN=****" in run["command"]
    (submitted,) = [
        e
        for e in _audit(server, "job.submit")
        if e["detail"].get("template", {}).get("name") == "flaky-cred"  # type: ignore[union-attr]
    ]
    assert submitted["detail"]["credentials"] == ["deploy-token"]  # type: ignore[index]

    # a credential scoped to other hosts is refused before anything is stored
    jobs_before = len(db_execute(server.db_url, "SELECT id FROM job"))
    assert server.cli("secrets", "set", "db-only", "--scope", "db", input="x" * 12).returncode == 0
    refused = operator.post("/api/templates/flaky-cred/launch", json={"params": {"tok": "db-only"}})
    assert refused.status_code == 403 and "may only be used on 'db'" in refused.json()["error"]
    assert len(db_execute(server.db_url, "SELECT id FROM job")) == jobs_before

    kept = server.state_dir / "secrets"
    wait_until(
        lambda: not kept.exists() or list(kept.iterdir()) == [], what="the job's secrets dropped"
    )
    assert _database_hits(server.db_url, value) == []
    assert _file_hits(server.state_dir, value, {}) == []
    wait_until(
        lambda: (
            not [
                p
                for p in (tmp_path / "agents").rglob("spool/*")
                if p.suffix in (".out", ".done") and not p.name.startswith("adhoc-")
            ]
        ),
        what="the agent's spool acknowledged",
    )
    assert _file_hits(tmp_path / "agents", value, {}) == []
    operator.close()


GUARDED = {
    "name": "guarded",
    "command": "echo deploying {{ params.env | quote }}",
    "pattern": "web",
    "params": [{"name": "env", "type": "choice", "choices": ["staging", "prod"], "required": True}],
    "launch": {"roles": ["operator"]},
    "approval": "required",
    "approvers": {"users": ["carol"]},
}


def test_approval_by_a_second_user(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A launch of a template with `approval: required` (or reaching a host of the server's
    `approval_hosts`) waits as a job `awaiting approval` with no runs; the requester may not
    approve it, nor a user without the approver right (403, audited); an approver's approval
    starts it as the requester's job and names the approver; a rejection needs a comment and
    runs nothing; one decision wins (409 for the next); a launch left waiting expires; the
    server's webhook hears every step, and every step is in the audit log."""
    from tests.test_notify import Receiver

    receiver = Receiver()
    inventory = write(tmp_path / "inv.ini", "[web]\ntp1\n[db]\ntp2\n")
    server = start_server(
        inventory,
        "--notify-url",
        receiver.url,
        "--approval-expiry",
        "20s",
        "--approval-hosts",
        "db",
    )
    start_agent(server, "tp1")
    assert server.http.post("/api/templates", json=GUARDED).status_code == 201
    opal = user_client(server, "opal", "operator")
    carol = user_client(server, "carol", "viewer")
    dave = user_client(server, "dave", "operator")

    asked = opal.post("/api/templates/guarded/launch", json={"params": {"env": "prod"}})
    assert asked.status_code == 202, asked.text
    job_id = asked.json()["job"]["id"]
    assert asked.json()["runs"] == [] and asked.json()["job"]["state"] == "awaiting approval"
    assert server.get(f"/api/jobs/{job_id}")["runs"] == []
    listed = server.http.get("/api/jobs", params={"status": "awaiting approval"})
    assert [j["id"] for j in listed.json()["jobs"]] == [job_id], listed.text
    waiting = carol.get("/api/approvals").json()["approvals"]
    assert [(a["job"], a["requested_by"], a["may_decide"]) for a in waiting] == [
        (job_id, "opal", True)
    ]
    assert opal.get("/api/approvals").json()["approvals"][0]["may_decide"] is False

    own = opal.post(f"/api/jobs/{job_id}/approve", json={"comment": "me"})
    assert own.status_code == 403 and "requester may not approve" in own.json()["error"]
    other = dave.post(f"/api/jobs/{job_id}/approve", json={})
    assert other.status_code == 403 and "approver right" in other.json()["error"]
    assert server.get(f"/api/jobs/{job_id}")["job"]["state"] == "awaiting approval"

    approved = carol.post(f"/api/jobs/{job_id}/approve", json={"comment": "go ahead"})
    assert approved.status_code == 200, approved.text
    decision = approved.json()
    assert decision["state"] == "approved" and decision["decided_by"] == "carol"
    launched = server.wait_job(decision["launched_job"])
    assert launched["job"]["submitted_by"] == "opal"
    assert [ln["text"] for ln in server.log_lines(launched["runs"][0]["id"])] == ["deploying prod"]
    assert server.get(f"/api/jobs/{job_id}")["job"]["state"] == "approved"
    twice = carol.post(f"/api/jobs/{job_id}/approve", json={})
    assert twice.status_code == 409 and "no longer awaiting approval" in twice.json()["error"]
    submit = next(e for e in _audit(server, "job.submit") if e["detail"].get("template"))  # type: ignore[union-attr]
    assert submit["actor"] == "opal"
    assert submit["detail"]["template"]["approved_by"] == "carol"  # type: ignore[index]

    # the CLI: `launch --follow` waits for the approval, then follows the job that runs
    def as_user(name: str) -> dict[str, str]:
        token = server.post("/api/tokens", {"name": "cli", "user": name})["token"]
        return {**server.env(), "EASYTASK_TOKEN": token}

    follow = subprocess.Popen(
        easytask_cmd("launch", "guarded", "-p", "env=staging", "--follow"),
        env=as_user("opal"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        (cli_job,) = wait_until(
            lambda: [a["job"] for a in server.get("/api/approvals")["approvals"]],
            what="the CLI's launch to wait",
        )
        by_cli = subprocess.run(
            easytask_cmd("approve", str(cli_job), "-m", "fine"),
            env=as_user("carol"),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert by_cli.returncode == 0, by_cli.stderr
        assert f"job {cli_job}: approved; job " in by_cli.stdout
        out, err = follow.communicate(timeout=120)
    finally:
        follow.kill()
    assert follow.returncode == 0, err
    assert f"job {cli_job}: awaiting approval" in out
    assert f"job {cli_job}: approved by carol: fine" in out and "deploying staging" in out

    second = opal.post("/api/templates/guarded/launch", json={"params": {"env": "staging"}})
    second_id = second.json()["job"]["id"]
    no_comment = carol.post(f"/api/jobs/{second_id}/reject", json={})
    assert no_comment.status_code == 400 and "comment is required" in no_comment.json()["error"]
    listed = server.cli("approvals", "list")
    assert (
        listed.returncode == 0
        and str(second_id) in listed.stdout
        and "env=staging" in listed.stdout
    )
    rejected = server.cli("reject", str(second_id), "-m", "not today")
    assert rejected.returncode == 0 and f"job {second_id}: rejected" in rejected.stdout
    after = server.get(f"/api/jobs/{second_id}")
    assert after["job"]["state"] == "rejected" and after["runs"] == []
    assert server.get(f"/api/jobs/{second_id}/approval")["comment"] == "not today"

    # a launch that can no longer start once approved (its credential was removed) fails
    assert server.cli("secrets", "set", "gone-token", input="v-1").returncode == 0
    needs = {
        "name": "needs-token",
        "command": "printenv {{ params.tok | quote }}",
        "pattern": "web",
        "params": [{"name": "tok", "type": "credential"}],
        "approval": "required",
    }
    assert server.http.post("/api/templates", json=needs).status_code == 201
    asked = opal.post("/api/templates/needs-token/launch", json={"params": {"tok": "gone-token"}})
    assert asked.status_code == 202, asked.text
    assert server.cli("secrets", "rm", "gone-token").returncode == 0
    failed = server.http.post(f"/api/jobs/{asked.json()['job']['id']}/approve", json={})
    assert failed.status_code == 409 and "approved, but the launch failed" in failed.json()["error"]
    assert server.get(f"/api/jobs/{asked.json()['job']['id']}")["job"]["state"] == "failed"
    assert _audit(server, "approval.launch_failed")

    plain = {**ECHO, "name": "anywhere", "pattern": "all"}
    assert server.http.post("/api/templates", json=plain).status_code == 201
    ruled = opal.post("/api/templates/anywhere/launch", json={"params": {"path": "p"}})
    assert ruled.status_code == 202, ruled.text  # tp2 is in approval_hosts: waits too
    ruled_id = ruled.json()["job"]["id"]
    expired = wait_until(
        lambda: server.get(f"/api/jobs/{ruled_id}/approval")["state"] == "expired",
        timeout=60,
        what="the waiting launch to expire",
    )
    assert expired
    late = carol.post(f"/api/jobs/{ruled_id}/approve", json={})
    assert late.status_code in (403, 409)
    assert server.get(f"/api/jobs/{ruled_id}")["job"]["state"] == "expired"

    actions = [e["action"] for e in server.get("/api/audit")["events"]]
    for action in (
        "approval.request",
        "approval.approve.refused",
        "approval.approve",
        "approval.reject",
        "approval.expire",
    ):
        assert action in actions, action
    events = wait_until(
        lambda: (
            (
                seen := [
                    h.get("X-EasyTask-Event") or h.get("x-easytask-event")
                    for h, _ in receiver.requests
                ]
            )
            and {"approval.requested", "approval.approved", "approval.rejected", "approval.expired"}
            <= set(seen)
            and seen
        ),
        timeout=30,
        what="the approval webhooks",
    )
    assert events.count("approval.requested") == 5
    bodies = [json.loads(b) for _, b in receiver.requests]
    approved_body = next(b for b in bodies if b["event"] == "approval.approved")
    assert approved_body["job"] == job_id and approved_body["decided_by"] == "carol"
    receiver.close()
    for c in (opal, carol, dave):
        c.close()
