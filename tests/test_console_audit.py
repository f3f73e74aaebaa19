"""State changes made in the console are audited like the API's: accept and revoke an agent
through the console's forms (a real server, a real agent, the CSRF field)."""

from __future__ import annotations

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory
from tests.support import wait_until


def test_console_accept_and_revoke_are_audited(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """The console's accept and revoke forms write `agent.accept` and `agent.revoke` with the
    admin, the console source and the agent's key, and the chain still verifies."""
    server = start_server()
    start_agent(server, "beta", enroll=False, wait=False)
    wait_until(lambda: server.agent_status("beta") == "pending", what="pending agent")
    fingerprint = next(a for a in server.get("/api/agents")["agents"] if a["name"] == "beta")[
        "fingerprint"
    ]
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    assert admin.form_post("/agents/beta/accept", {}, csrf=False).status_code == 403
    assert server.get("/api/audit", action="agent.accept")["events"] == []
    for action, state in (("accept", "accepted"), ("revoke", "revoked")):
        resp = admin.form_post(f"/agents/beta/{action}", {})
        assert resp.status_code == 303, resp.text
        (event,) = server.get("/api/audit", action=f"agent.{action}")["events"]
        assert event["actor"] == "admin" and event["source"].startswith("console ")
        assert event["detail"] == {"agent": "beta", "fingerprint": fingerprint}
        row = next(a for a in server.get("/api/agents")["agents"] if a["name"] == "beta")
        assert row["state"] == state
    admin.close()
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
