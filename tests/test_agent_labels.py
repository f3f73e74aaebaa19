"""Group labels an agent reports are labels, not memberships, until an admin approves them; names
and labels follow one character rule at the agent and at the server (real server, real agent
processes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import (
    PostgresCluster,
    Procs,
    ServerHandle,
    easytask_cmd,
    launch_agent,
    wait_until,
)

MARKER = "only-for-prod-7f3a"

# `easytask agent` with the agent's own name check switched off: what a modified agent sends
UNCHECKED_AGENT = [
    sys.executable,
    "-c",
    "import sys\n"
    "import easytask.names as n\n"
    "n.check_name = lambda value, what='agent name': value\n"
    "n.check_labels = lambda values: values\n"
    "from easytask.cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n",
]


def agent_row(server: ServerHandle, name: str) -> dict[str, Any]:
    """The agent's row in GET /api/agents."""
    return next(a for a in server.get("/api/agents")["agents"] if a["name"] == name)


def hosts_of(server: ServerHandle, pattern: str) -> set[str]:
    """The hosts a job for `pattern` runs on (the job is submitted and left to finish)."""
    job = server.submit(pattern, "true")
    server.wait_job(job["job"]["id"])
    return {run["host"] for run in job["runs"]}


def marker_seen_by(server: ServerHandle, host: str, tmp_path: Path) -> str:
    """What `{{ prod_marker }}` renders to on `host` in a playbook run ('none' if unset)."""
    book = write(
        tmp_path / f"vars-{host}.yml",
        f"""\
        name: vars
        hosts: {host}
        tasks:
          - name: show
            shell: echo "marker={{{{ prod_marker | default('none') }}}}"
        """,
    )
    result = server.cli("play", str(book), "--format", "json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    (line,) = [x["text"] for x in server.log_lines(run["id"]) if x["text"].startswith("marker=")]
    return line.removeprefix("marker=")


def test_a_label_places_the_agent_in_no_group_until_approved(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """An accepted agent started with `--group prod` gets neither prod's jobs nor prod's
    group_vars; `agents approve --groups prod` (audited, with the key) lets it in; a label it
    reports later is pending again; `agents withdraw` takes it out again (audited)."""
    inventory = tmp_path / "inv"
    write(inventory / "hosts.ini", "[prod]\nprod1\n")
    write(inventory / "group_vars" / "prod.yml", f"prod_marker: {MARKER}\n")
    server = start_server(inventory)
    start_agent(server, "prod1")
    rogue_dir = tmp_path / "rogue"
    rogue = start_agent(server, "rogue", "--group", "prod", state_dir=rogue_dir)

    row = agent_row(server, "rogue")
    assert (row["state"], row["labels"], row["pending"], row["groups"]) == (
        "accepted",
        ["prod"],
        ["prod"],
        [],
    )
    listing = server.cli("agents")
    assert listing.returncode == 0, listing.stderr
    assert "PENDING LABELS" in listing.stdout
    assert any(
        line.split()[0] == "rogue" and line.split()[-1] == "prod"
        for line in listing.stdout.splitlines()
    )
    shown = server.cli("agents", "show", "rogue")
    assert shown.returncode == 0, shown.stderr
    assert "pending labels:         prod\n" in shown.stdout and "groups:                 \n" in (
        shown.stdout
    )
    assert hosts_of(server, "prod") == {"prod1"}
    assert marker_seen_by(server, "rogue", tmp_path) == "none"
    assert marker_seen_by(server, "prod1", tmp_path) == MARKER
    assert server.get("/api/audit", action="agent.approve")["events"] == []

    # a label the agent does not report, or another key, is refused and nothing changes
    unknown = server.cli("agents", "approve", "rogue", "--groups", "db")
    assert unknown.returncode == 2 and "does not report" in unknown.stderr, unknown.stderr
    wrong_key = server.cli(
        "agents", "approve", "rogue", "--groups", "prod", "--fingerprint", "SHA256:other"
    )
    assert wrong_key.returncode == 2 and row["fingerprint"] in wrong_key.stderr
    bad = server.cli("agents", "approve", "rogue", "--groups", "prod;id")
    assert bad.returncode == 2 and "'prod;id' is not valid" in bad.stderr, bad.stderr
    assert agent_row(server, "rogue")["approved"] == []
    assert server.get("/api/audit", action="agent.approve")["events"] == []

    approved = server.cli(
        "agents", "approve", "rogue", "--groups", "prod", "--fingerprint", row["fingerprint"]
    )
    assert approved.returncode == 0, approved.stderr
    assert "rogue: approved labels prod" in approved.stdout
    (event,) = server.get("/api/audit", action="agent.approve")["events"]
    assert event["actor"] == "admin"
    assert event["detail"] == {
        "agent": "rogue",
        "groups": ["prod"],
        "fingerprint": row["fingerprint"],
        "approved": ["prod"],
    }
    assert agent_row(server, "rogue")["groups"] == ["prod"]
    assert hosts_of(server, "prod") == {"prod1", "rogue"}
    assert marker_seen_by(server, "rogue", tmp_path) == MARKER

    # restarted with one more label: the new one is pending, the approved one still counts
    rogue.stop()
    wait_until(lambda: server.agent_status("rogue") == "unreachable", what="rogue gone")
    start_agent(server, "rogue", "--group", "prod", "--group", "db", state_dir=rogue_dir)
    row = agent_row(server, "rogue")
    assert (row["labels"], row["groups"], row["pending"]) == (["prod", "db"], ["prod"], ["db"])
    refused = server.http.post("/api/jobs", json={"pattern": "db", "command": "true"})
    assert refused.status_code == 400 and "rogue (db)" in refused.json()["error"], refused.text

    withdrawn = server.cli("agents", "withdraw", "rogue", "--groups", "prod")
    assert withdrawn.returncode == 0, withdrawn.stderr
    (event,) = server.get("/api/audit", action="agent.withdraw")["events"]
    assert event["detail"]["approved"] == [] and event["detail"]["groups"] == ["prod"]
    assert agent_row(server, "rogue")["pending"] == ["prod", "db"]
    assert hosts_of(server, "prod") == {"prod1"}
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_a_label_the_inventory_gives_is_not_pending(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A label naming a group the inventory already places the host in is shown as a group,
    not pending; an unapproved label names no group and the refusal says how to approve it."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n")
    server = start_server(inventory)
    start_agent(server, "web1", "--group", "web", "--group", "canary")
    row = agent_row(server, "web1")
    assert (row["groups"], row["pending"]) == (["web"], ["canary"])
    resp = server.http.post("/api/jobs", json={"pattern": "canary", "command": "true"})
    assert resp.status_code == 400, resp.text
    assert "agents approve NAME --groups LABEL" in resp.json()["error"]
    assert "web1 (canary)" in resp.json()["error"]


def test_console_asks_before_approving_a_label(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """The agents page marks a pending label with Approve…, which leads to a page naming the
    label and the key; the form (CSRF, key) approves it, audited; Withdraw… undoes it."""
    server = start_server()
    start_agent(server, "omega", "--group", "prod")
    key = agent_row(server, "omega")["fingerprint"]
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    page = admin.http.get("/agents")
    assert "prod (pending)" in page.text
    assert 'href="/agents/omega/approve?group=prod"' in page.text
    confirm = admin.http.get("/agents/omega/approve", params={"group": "prod"})
    assert confirm.status_code == 200
    assert key in confirm.text and 'name="groups" value="prod"' in confirm.text
    assert admin.http.get("/agents/omega/approve", params={"group": "a,b"}).status_code == 400
    no_csrf = admin.http.post("/agents/omega/approve", data={"groups": "prod"})
    assert no_csrf.status_code == 403
    wrong = admin.form_post(
        "/agents/omega/approve", {"groups": "prod", "fingerprint": "SHA256:not-this-one"}
    )
    assert wrong.status_code == 409, wrong.text
    assert agent_row(server, "omega")["approved"] == []
    right = admin.form_post("/agents/omega/approve", {"groups": "prod", "fingerprint": key})
    assert right.status_code == 303, right.text
    assert agent_row(server, "omega")["groups"] == ["prod"]
    (event,) = server.get("/api/audit", action="agent.approve")["events"]
    assert event["source"].startswith("console")
    assert event["detail"]["approved"] == ["prod"] and event["detail"]["fingerprint"] == key
    assert 'href="/agents/omega/withdraw?group=prod"' in admin.http.get("/agents").text
    back = admin.form_post("/agents/omega/withdraw", {"groups": "prod", "fingerprint": key})
    assert back.status_code == 303, back.text
    assert agent_row(server, "omega")["pending"] == ["prod"]
    assert len(server.get("/api/audit", action="agent.withdraw")["events"]) == 1
    admin.close()


def test_the_agent_refuses_a_bad_name_or_label_before_dialling(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """`easytask agent` with `web1;curl x|sh` or a comma as its name or a label exits 2 at
    start, naming the bad value; it writes nothing and the server hears of nothing."""
    server = start_server()
    cases = [
        ("web1;curl x|sh", [], "agent name 'web1;curl x|sh' is not valid"),
        ("ok1", ["--group", "web1;curl x|sh"], "group label 'web1;curl x|sh' is not valid"),
        ("ok2", ["--group", "web,db"], "group label 'web,db' is not valid"),
        ("a,b", [], "agent name 'a,b' is not valid"),
    ]
    for i, (name, extra, message) in enumerate(cases):
        state = tmp_path / f"bad{i}"
        args = easytask_cmd(
            "agent", "--server", server.agents_addr, "--name", name, "--state-dir", str(state)
        )
        done = subprocess.run(
            [*args, *extra], capture_output=True, text=True, timeout=60, env=server.env()
        )
        assert done.returncode == 2, done.stdout + done.stderr
        assert message in done.stderr, done.stderr
        assert not state.exists()
    data = server.get("/api/agents")
    assert (data["agents"], data["refused"]) == ([], [])


def test_the_server_refuses_a_bad_name_or_label_and_stores_nothing(
    start_server: ServerFactory, procs: Procs, tmp_path: Path
) -> None:
    """An agent that skips its own check is refused by the server even with a valid token:
    the reason names the bad name or label, the refusal is audited, no agent is stored."""
    server = start_server()
    cases = [
        ("web1;curl x|sh", [], "agent name 'web1;curl x|sh' is not valid"),
        ("lab1", ["--group", "web1;curl x|sh"], "group label 'web1;curl x|sh' is not valid"),
        ("lab2", ["--group", "web,db"], "group label 'web,db' is not valid"),
    ]
    for i, (name, extra, _) in enumerate(cases):
        launch_agent(
            procs,
            server,
            name,
            tmp_path / f"unchecked{i}",
            *extra,
            command=UNCHECKED_AGENT,
            wait=False,
        )
    for name, _, message in cases:
        wait_until(
            lambda name=name, message=message: any(
                r["name"] == name and message in r["reason"]
                for r in server.get("/api/agents")["refused"]
            ),
            what=f"refusal of {name}",
        )
        events = server.get("/api/audit", action="agent.refused")["events"]
        assert any(
            e["detail"]["agent"] == name and message in e["detail"]["reason"] for e in events
        ), events
    assert server.get("/api/agents")["agents"] == []
    assert server.get("/api/audit", action="agent.enroll")["events"] == []


@pytest.mark.postgres
def test_an_approval_on_one_server_counts_on_every_server_of_the_database(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Two servers on one PostgreSQL: a label approved through the server that does not hold
    the agent places it in the group on both; withdrawn through the other, on neither."""
    url = postgres.new_database()
    first = start_server(None, "--db", url, state_dir=tmp_path / "a")
    second_state = tmp_path / "b"
    second_state.mkdir()
    for name in ("client_key", "client_key.pub"):  # servers on one database share this key
        shutil.copy(first.state_dir / name, second_state / name)
    start_agent(first, "tau", "--group", "web")
    second = start_server(None, "--db", url, state_dir=second_state)
    for server in (first, second):
        refused = server.http.post("/api/jobs", json={"pattern": "web", "command": "true"})
        assert refused.status_code == 400, refused.text
    assert second.cli("agents", "approve", "tau", "--groups", "web").returncode == 0

    def selects(server: ServerHandle) -> bool:
        return server.http.get("/api/hosts", params={"pattern": "web"}).status_code == 200

    wait_until(lambda: selects(first), what="the approval reaching the first server")
    assert hosts_of(first, "web") == {"tau"} and hosts_of(second, "web") == {"tau"}
    assert first.cli("agents", "withdraw", "tau", "--groups", "web").returncode == 0
    wait_until(lambda: not selects(second), what="the withdrawal reaching the second server")
    assert not selects(first)
