"""An agent name is bound to the first key that claimed it until an admin decides: real agent
processes with their own state dirs (so their own keys) claiming one name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, wait_until


def agent_row(server: ServerHandle, name: str) -> dict[str, Any]:
    """The agent's row in GET /api/agents."""
    return next(a for a in server.get("/api/agents")["agents"] if a["name"] == name)


def refusals(server: ServerHandle, name: str, fingerprint: str) -> list[dict[str, Any]]:
    """The audited refusals of `fingerprint` claiming `name`."""
    events = server.get("/api/audit", action="agent.refused")["events"]
    return [
        e
        for e in events
        if e["detail"].get("agent") == name and e["detail"].get("fingerprint") == fingerprint
    ]


def hellos_judged(state_dir: Path) -> int:
    """How many of an agent's links have ended so far (each after the server judged its hello)."""
    log = state_dir / "agent.log"
    return log.read_text().count("disconnected from") if log.exists() else 0


def fingerprint_of(state_dir: Path) -> str:
    """The SHA-256 fingerprint of the host key an agent keeps in its state dir."""
    import asyncssh

    return str(asyncssh.read_public_key(state_dir / "host_key.pub").get_fingerprint("sha256"))


def test_second_key_on_a_pending_name_is_refused_and_accept_names_the_key(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A pending name keeps the first key that claimed it: a second key (even with a valid
    token) is refused and audited; `agents accept --fingerprint` with another key is refused
    with nothing changed; with the pending key it is accepted, the event records that key."""
    server = start_server()
    first = tmp_path / "first"
    start_agent(server, "kappa", enroll=False, wait=False, state_dir=first)
    wait_until(lambda: server.agent_status("kappa") == "pending", what="pending agent")
    original = agent_row(server, "kappa")["fingerprint"]
    assert original == fingerprint_of(first)

    forged = tmp_path / "forged"
    start_agent(server, "kappa", enroll=True, wait=False, state_dir=forged)
    wait_until(lambda: (forged / "host_key.pub").exists(), what="forged agent key")
    other = fingerprint_of(forged)
    assert other != original
    wait_until(lambda: refusals(server, "kappa", other), what="refusal audited")
    (event, *_) = refusals(server, "kappa", other)
    assert "held by another key" in event["detail"]["reason"]
    row = agent_row(server, "kappa")
    assert (row["fingerprint"], row["state"]) == (original, "pending")

    wrong = server.cli("agents", "accept", "kappa", "--fingerprint", other)
    assert wrong.returncode == 2, wrong.stdout + wrong.stderr
    assert original in wrong.stderr
    assert agent_row(server, "kappa")["state"] == "pending"
    assert server.get("/api/audit", action="agent.accept")["events"] == []

    right = server.cli("agents", "accept", "kappa", "--fingerprint", original)
    assert right.returncode == 0, right.stderr
    assert f"kappa: accepted (key {original})" in right.stdout
    (accepted,) = server.get("/api/audit", action="agent.accept")["events"]
    assert accepted["detail"] == {"agent": "kappa", "fingerprint": original}
    wait_until(lambda: server.agent_status("kappa") == "online", timeout=40, what="online")
    assert agent_row(server, "kappa")["fingerprint"] == original
    result = server.cli("run", "kappa", "-a", "echo hi")
    assert result.returncode == 0, result.stderr


def test_revoked_name_needs_a_token_and_an_accept_for_a_new_key(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A new key on a revoked name without a token is refused; with a valid token the name
    goes back to pending with the new key (never straight to accepted) until an admin
    accepts that key."""
    server = start_server()
    old = start_agent(server, "lamda", state_dir=tmp_path / "old")
    old_key = agent_row(server, "lamda")["fingerprint"]
    assert server.cli("agents", "revoke", "lamda").returncode == 0
    old.stop()

    bare = tmp_path / "bare"
    squatter = start_agent(server, "lamda", enroll=False, wait=False, state_dir=bare)
    wait_until(lambda: (bare / "host_key.pub").exists(), what="squatter key")
    bare_key = fingerprint_of(bare)
    wait_until(lambda: refusals(server, "lamda", bare_key), what="refusal audited")
    assert "enrolment token" in refusals(server, "lamda", bare_key)[0]["detail"]["reason"]
    row = agent_row(server, "lamda")
    assert (row["state"], row["fingerprint"]) == ("revoked", old_key)
    squatter.stop()

    fresh = tmp_path / "fresh"
    start_agent(server, "lamda", enroll=True, wait=False, state_dir=fresh)
    wait_until(lambda: agent_row(server, "lamda")["state"] == "pending", what="pending again")
    new_key = fingerprint_of(fresh)
    assert agent_row(server, "lamda")["fingerprint"] == new_key
    (event,) = server.get("/api/audit", action="agent.reenroll")["events"]
    assert event["detail"] == {"agent": "lamda", "fingerprint": new_key}
    assert (
        server.get("/api/audit", action="agent.enroll")["events"][-1]["detail"]["fingerprint"]
        == old_key
    )  # the first enrolment only
    # reconnects with the same (used) token change nothing
    judged = hellos_judged(fresh)
    wait_until(lambda: hellos_judged(fresh) >= judged + 2, what="two more hellos")
    assert agent_row(server, "lamda")["state"] == "pending"
    assert server.cli("agents", "accept", "lamda", "--fingerprint", new_key).returncode == 0
    wait_until(lambda: server.agent_status("lamda") == "online", timeout=40, what="online")


def test_delete_a_pending_record_frees_the_name_not_an_online_one(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """`agents delete` removes a pending agent's record (audited with its key); an online
    agent is refused with 409 until it is revoked."""
    server = start_server()
    start_agent(server, "mu")
    start_agent(server, "nu", enroll=False, wait=False, state_dir=tmp_path / "nu")
    wait_until(lambda: server.agent_status("nu") == "pending", what="pending agent")
    key = agent_row(server, "nu")["fingerprint"]

    busy = server.cli("agents", "delete", "mu")
    assert busy.returncode == 2 and "revoke it first" in busy.stderr, busy.stderr
    assert server.agent_status("mu") == "online"

    gone = server.cli("agents", "delete", "nu")
    assert gone.returncode == 0, gone.stderr
    assert "nu: deleted" in gone.stdout
    (event,) = server.get("/api/audit", action="agent.delete")["events"]
    assert event["detail"] == {"agent": "nu", "fingerprint": key}
    assert server.cli("agents", "delete", "nu-unknown").returncode == 2
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_console_shows_the_key_and_asks_before_accepting(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """The agents page shows each key; Accept leads to a page naming the key, whose form
    carries it; a form with another key is refused (409) and nothing changes."""
    server = start_server()
    start_agent(server, "xi", enroll=False, wait=False, state_dir=tmp_path / "xi")
    wait_until(lambda: server.agent_status("xi") == "pending", what="pending agent")
    key = agent_row(server, "xi")["fingerprint"]
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    page = admin.http.get("/agents")
    assert key in page.text and 'href="/agents/xi/accept"' in page.text
    confirm = admin.http.get("/agents/xi/accept")
    assert confirm.status_code == 200
    assert key in confirm.text and 'name="fingerprint"' in confirm.text
    wrong = admin.form_post("/agents/xi/accept", {"fingerprint": "SHA256:not-this-one"})
    assert wrong.status_code == 409, wrong.text
    assert agent_row(server, "xi")["state"] == "pending"
    right = admin.form_post("/agents/xi/accept", {"fingerprint": key})
    assert right.status_code == 303, right.text
    assert agent_row(server, "xi")["state"] == "accepted"
    (event,) = server.get("/api/audit", action="agent.accept")["events"]
    assert event["detail"] == {"agent": "xi", "fingerprint": key}
    admin.close()
