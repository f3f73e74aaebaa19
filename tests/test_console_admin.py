"""The console's admin and auditor pages on a real server: users, API tokens, the audit log.
Each action goes through a form with the CSRF field, is audited, and is refused to non-admins."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import httpx

from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import db_execute, wait_until

SECRET = re.compile(r'<code class="admin-secret" id="(?:one-time-password|token-secret)">([^<]+)<')


def events(server: object, action: str) -> list[dict[str, object]]:
    return list(server.get("/api/audit", action=action)["events"])  # type: ignore[attr-defined]


def signs_in(server: object, name: str, password: str) -> int:
    """The status of a console sign-in (303: signed in, 401: refused)."""
    client = Browserless(server)  # type: ignore[arg-type]
    try:
        return client.login(name, password).status_code
    finally:
        client.close()


def test_admin_manages_users_and_tokens_through_the_console(start_server: ServerFactory) -> None:
    """Add a user (one-time password shown once, and it signs in), change role and scope, reset
    the password, disable and enable; create a token with an expiry (shown once, and it works),
    revoke it: each an audited change from the console, none without the CSRF field."""
    server = start_server()
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    page = admin.http.get("/admin/users")
    assert page.status_code == 200 and 'data-testid="nav-admin"' in page.text

    # without the CSRF field nothing is made
    resp = admin.form_post("/admin/users", {"name": "carol", "role": "operator"}, csrf=False)
    assert resp.status_code == 403 and events(server, "user.create") == []

    # a bad name or scope: a 4xx naming it, nothing stored
    resp = admin.form_post("/admin/users", {"name": "bad name", "role": "viewer"})
    assert resp.status_code == 400 and "name must be" in resp.text
    resp = admin.form_post("/admin/users", {"name": "carol", "role": "root"})
    assert resp.status_code == 400 and "unknown role" in resp.text
    assert events(server, "user.create") == []

    resp = admin.form_post("/admin/users", {"name": "carol", "role": "operator", "scope": "web*"})
    assert resp.status_code == 200, resp.text
    match = SECRET.search(resp.text)
    assert match, resp.text
    first = match.group(1)
    assert "carol" in admin.http.get("/admin/users").text
    assert first not in admin.http.get("/admin/users").text  # shown once only
    (created,) = events(server, "user.create")
    assert created["actor"] == "admin" and str(created["source"]).startswith("console ")
    assert created["detail"] == {"user": "carol", "role": "operator", "scope": "web*"}
    assert first not in str(server.get("/api/audit")["events"])
    assert signs_in(server, "carol", first) == 303

    resp = admin.form_post("/admin/users", {"name": "carol", "role": "viewer"})
    assert resp.status_code == 409 and "exists" in resp.text

    resp = admin.form_post("/admin/users/carol", {"role": "viewer", "scope": "db*"})
    assert resp.status_code == 303, resp.text
    row = next(u for u in server.get("/api/users")["users"] if u["name"] == "carol")
    assert (row["role"], row["scope"]) == ("viewer", "db*")
    (updated,) = events(server, "user.update")
    assert updated["detail"] == {"user": "carol", "role": "viewer", "scope": "db*"}
    resp = admin.form_post("/admin/users/carol", {"role": "viewer", "scope": "web["})
    assert resp.status_code == 400

    resp = admin.form_post("/admin/users/carol/password", {})
    assert resp.status_code == 200
    match = SECRET.search(resp.text)
    assert match
    second = match.group(1)
    assert second != first
    assert signs_in(server, "carol", first) == 401
    assert signs_in(server, "carol", second) == 303
    resp = admin.form_post("/admin/users/carol/password", {"password": "short"})
    assert resp.status_code == 400 and "password must be" in resp.text
    resets = [e for e in events(server, "user.update") if e["detail"].get("password")]  # type: ignore[union-attr]
    (reset,) = resets
    assert reset["detail"]["user"] == "carol" and reset["detail"]["password"] == "reset"  # type: ignore[index]

    assert admin.form_post("/admin/users/admin/disable", {}).status_code == 409
    assert admin.form_post("/admin/users/carol/disable", {}).status_code == 303
    assert signs_in(server, "carol", second) == 401
    assert admin.form_post("/admin/users/carol/enable", {}).status_code == 303
    assert signs_in(server, "carol", second) == 303
    switched = [
        (e["detail"]["user"], e["detail"]["disabled"])  # type: ignore[index]
        for e in events(server, "user.update")
        if "disabled" in e["detail"]  # type: ignore[operator]
    ]
    assert switched == [("carol", False), ("carol", True)]
    assert admin.form_post("/admin/users/nobody/disable", {}).status_code == 404

    # tokens: created with an expiry, shown once, works, listed, revoked
    resp = admin.form_post("/admin/tokens", {"user": "carol", "name": "ci", "ttl": "forever"})
    assert resp.status_code == 400 and "ttl" in resp.text
    resp = admin.form_post("/admin/tokens", {"user": "nobody", "name": "ci", "ttl": "1d"})
    assert resp.status_code == 404
    assert events(server, "token.create") == []
    resp = admin.form_post("/admin/tokens", {"user": "carol", "name": "ci", "ttl": "2d"})
    assert resp.status_code == 200, resp.text
    match = SECRET.search(resp.text)
    assert match
    secret = match.group(1)
    (made,) = events(server, "token.create")
    assert made["detail"]["user"] == "carol" and made["detail"]["ttl"] == 172800  # type: ignore[index]
    assert str(made["source"]).startswith("console ")
    who = httpx.get(f"{server.url}/api/whoami", headers={"authorization": f"Bearer {secret}"})
    assert who.json()["name"] == "carol"
    listing = admin.http.get("/admin/tokens").text
    assert secret not in listing
    (token,) = [t for t in server.get("/api/tokens")["tokens"] if t["name"] == "ci"]
    assert f'data-token="{token["id"]}"' in listing
    assert token["last_used"] is not None  # the whoami above
    resp = admin.form_post(f"/admin/tokens/{token['id']}/revoke", {}, csrf=False)
    assert resp.status_code == 403 and events(server, "token.revoke") == []
    assert admin.form_post(f"/admin/tokens/{token['id']}/revoke", {}).status_code == 303
    (revoked,) = events(server, "token.revoke")
    assert revoked["actor"] == "admin" and str(revoked["source"]).startswith("console ")
    who = httpx.get(f"{server.url}/api/whoami", headers={"authorization": f"Bearer {secret}"})
    assert who.status_code == 401
    assert admin.form_post("/admin/tokens/99999/revoke", {}).status_code == 404

    # the audit page shows them, filtered, with the chain verified; the export is /api/audit's
    page = admin.http.get("/audit", params={"action": "token.", "actor": "admin"})
    assert page.status_code == 200 and "Chain intact" in page.text
    assert 'data-action="token.create"' in page.text
    assert 'data-action="token.revoke"' in page.text
    assert 'data-action="user.create"' not in page.text
    page = admin.http.get("/audit", params={"q": "db*"})
    assert page.text.count('data-action="user.update"') == 1
    assert admin.http.get("/audit", params={"since": "yesterday-ish"}).status_code == 400
    export = admin.http.get("/audit/export", params={"action": "user."})
    assert export.status_code == 200 and "attachment" in export.headers["content-disposition"]
    assert export.json()["events"] == server.get("/api/audit", action="user.")["events"]
    admin.close()
    verified = server.cli("audit", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_admin_pages_refuse_other_roles_and_auditors_read_the_log(
    start_server: ServerFactory,
) -> None:
    """An operator or viewer gets 403 on every admin page and action (nothing changes); an
    auditor reads the audit log and its export but not the users or tokens."""
    server = start_server()
    add_user(server, "olga", "operator", "operator-pass-1")
    add_user(server, "aud", "auditor", "auditor-pass-1")
    olga = Browserless(server)
    assert olga.login("olga", "operator-pass-1").status_code == 303
    assert 'data-testid="nav-admin"' not in olga.http.get("/").text
    for path in ("/admin/users", "/admin/tokens", "/audit", "/audit/export"):
        assert olga.http.get(path).status_code == 403, path
    before = len(server.get("/api/audit")["events"])
    posts = {
        "/admin/users": {"name": "eve", "role": "admin", "password": "long-enough-1"},
        "/admin/users/olga": {"role": "admin", "scope": ""},
        "/admin/users/aud/disable": {},
        "/admin/users/aud/password": {"password": "long-enough-1"},
        "/admin/tokens": {"user": "olga", "name": "x", "ttl": "1d"},
    }
    for path, data in posts.items():
        assert olga.form_post(path, data).status_code == 403, path
    assert len(server.get("/api/audit")["events"]) == before
    assert {u["name"]: u["role"] for u in server.get("/api/users")["users"]}["olga"] == "operator"
    olga.close()

    aud = Browserless(server)
    assert aud.login("aud", "auditor-pass-1").status_code == 303
    home = aud.http.get("/").text
    assert 'href="/audit"' in home and 'data-testid="nav-admin"' not in home
    page = aud.http.get("/audit", params={"action": "user.create"})
    assert page.status_code == 200 and page.text.count('data-action="user.create"') == 2
    assert aud.http.get("/audit/export").status_code == 200
    assert aud.http.get("/admin/users").status_code == 403
    assert aud.http.get("/admin/tokens").status_code == 403
    aud.close()


def test_inventory_browser_shows_origins_masks_secrets_and_last_contact(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """A host's variables with the layer each comes from (group, host, a group_vars file), the
    vault value and a password variable masked (in no page), an agentless host's last contact
    from its newest run; not for an operator."""
    from tests.test_vault import ansible

    vaulted = f"vaulted-{secrets.token_hex(8)}"
    plain_secret = f"plain-{secrets.token_hex(8)}"
    write(tmp_path / "prod.pw", "prod password\n")
    inventory = write(
        tmp_path / "inv" / "hosts.ini",
        "[web]\n"
        f"web1 easytask_connection=ssh ansible_host=127.0.0.1 ansible_port=1 "
        f"api_token={plain_secret}\n"
        "web2 easytask_connection=ssh ansible_host=127.0.0.1 ansible_port=1\n"
        "[web:vars]\ntier=front\n[all:vars]\nregion=eu\n",
    )
    group_vars = write(
        tmp_path / "inv" / "group_vars" / "web.yml", f"db_password: {vaulted}\nowner: ops\n"
    )
    ansible("ansible-vault", "encrypt", "--vault-id", "prod@prod.pw", str(group_vars), cwd=tmp_path)
    server = start_server(inventory, "--vault-id", f"prod@{tmp_path / 'prod.pw'}")
    ran = server.cli("run", "web1", "-a", "true")
    assert "unreachable" in ran.stdout + ran.stderr, ran.stdout + ran.stderr
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303

    page = admin.http.get("/admin/inventory")
    assert page.status_code == 200, page.text
    rows = dict(re.findall(r'<tr data-host="([^"]+)">(.*?)</tr>', page.text, re.S))
    assert "unreachable" in rows["web1"] and "(run " in rows["web1"]
    assert "no run yet" in rows["web2"]
    assert 'data-group="web"' in page.text

    page = admin.http.get("/admin/inventory", params={"host": "web1"})
    assert page.status_code == 200
    cells = {
        name: (value, origin)
        for name, value, origin in re.findall(
            r'<tr data-var="([^"]+)">\s*<td>.*?</td>\s*<td><code>(.*?)</code>.*?</td>\s*'
            r'<td class="inventory-origin">(.*?)</td>',
            page.text,
            re.S,
        )
    }
    assert cells["tier"] == ("front", "group web")
    assert cells["region"] == ("eu", "group all")
    # every string of a vaulted file is a vault value
    assert cells["owner"][0] == "****" and cells["owner"][1].endswith("/group_vars/web")
    assert cells["db_password"][0] == "****" and cells["db_password"][1].endswith("group_vars/web")
    assert cells["api_token"] == ("****", "host")
    assert cells["ansible_port"] == ("1", "host")
    group = admin.http.get("/admin/inventory", params={"group": "web"})
    assert group.status_code == 200 and "****" in group.text
    for text in (page.text, group.text, admin.http.get("/admin/inventory").text):
        assert vaulted not in text and plain_secret not in text
    assert admin.http.get("/admin/inventory", params={"host": "nope"}).status_code == 404
    admin.close()

    add_user(server, "olga", "operator", "operator-pass-1")
    olga = Browserless(server)
    assert olga.login("olga", "operator-pass-1").status_code == 303
    assert olga.http.get("/admin/inventory", params={"host": "web1"}).status_code == 403
    olga.close()


def test_agent_accept_revoke_and_delete_go_through_confirm_pages(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """The agents page links Accept…, Revoke… and Delete… to pages naming the agent's key
    before the form that does it; each action is audited; an operator gets 403 on them."""
    server = start_server()
    start_agent(server, "gamma", enroll=False, wait=False)
    wait_until(lambda: server.agent_status("gamma") == "pending", what="pending agent")
    (row,) = [a for a in server.get("/api/agents")["agents"] if a["name"] == "gamma"]
    key = row["fingerprint"]
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    listing = admin.http.get("/agents").text
    assert 'href="/agents/gamma/accept"' in listing and 'href="/agents/gamma/revoke"' in listing
    assert 'action="/agents/gamma/revoke"' not in listing  # no one-click revoke
    for action in ("accept", "revoke"):
        confirm = admin.http.get(f"/agents/gamma/{action}")
        assert confirm.status_code == 200 and key in confirm.text
        assert f'action="/agents/gamma/{action}"' in confirm.text
        assert admin.form_post(f"/agents/gamma/{action}", {"fingerprint": key}).status_code == 303
        (event,) = events(server, f"agent.{action}")
        assert event["detail"] == {"agent": "gamma", "fingerprint": key}
    add_user(server, "olga", "operator", "operator-pass-1")
    olga = Browserless(server)
    assert olga.login("olga", "operator-pass-1").status_code == 303
    assert olga.http.get("/agents/gamma/delete").status_code == 403
    assert olga.form_post("/agents/gamma/delete", {}).status_code == 403
    olga.close()
    wait_until(lambda: server.agent_status("gamma") == "revoked", what="revoked agent")
    confirm = admin.http.get("/agents/gamma/delete")
    assert confirm.status_code == 200 and key in confirm.text and "forgets" in confirm.text
    assert admin.form_post("/agents/gamma/delete", {}).status_code == 303
    (deleted,) = events(server, "agent.delete")
    assert deleted["actor"] == "admin" and deleted["detail"]["agent"] == "gamma"  # type: ignore[index]
    assert server.agent_status("gamma") is None
    admin.close()


def verify_box(admin: Browserless) -> str:
    """The audit page's verification box (its text, with its data-verify state)."""
    page = admin.http.get("/audit")
    assert page.status_code == 200, page.text
    match = re.search(r'(<section class="card audit-verify.*?</section>)', page.text, re.S)
    assert match, page.text
    return match.group(1)


def test_the_audit_page_checks_new_events_and_walks_the_whole_chain_on_request(
    start_server: ServerFactory,
) -> None:
    """The page checks only the events added since its last check (a new event edited in the
    database shows at once, naming it); an event edited before that shows when the auditor asks
    for the whole chain, as `GET /api/audit/verify` says; deleted rows and a deleted checkpoint
    file show on the next load."""
    server = start_server()
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    wait_until(lambda: 'data-verify="ok"' in verify_box(admin), what="the first walk")
    head = int(server.get("/api/audit")["events"][0]["id"])
    assert f"up to event {head} " in verify_box(admin)

    # a new event, edited before the page looks: broken there, on the page and the API
    server.post("/api/prune", {"dry_run": True})
    new = head + 1
    (original,) = db_execute(
        server.db_url, "SELECT actor FROM audit_event WHERE id = :id", {"id": new}
    )
    db_execute(
        server.db_url, "UPDATE audit_event SET actor = 'mallory' WHERE id = :id", {"id": new}
    )
    box = verify_box(admin)
    assert 'data-verify="broken"' in box
    assert f"at event {new} " in box and f"row {new}: contents do not match its hash" in box
    result = server.get("/api/audit/verify")
    assert not result["ok"] and result["bad_row"] == new, result
    # put back, the whole chain walked again on request: intact
    db_execute(
        server.db_url,
        "UPDATE audit_event SET actor = :a WHERE id = :id",
        {"a": original[0], "id": new},
    )
    assert admin.form_post("/audit/verify", {}, csrf=False).status_code == 403
    resp = admin.form_post("/audit/verify", {})
    assert resp.status_code == 303 and resp.headers["location"] == "/audit"
    assert f"up to event {new} " in verify_box(admin)

    # an event already checked, edited: the page's check from its last point does not read it
    # again; the whole chain, walked on request, is broken there, as the API says
    db_execute(server.db_url, "UPDATE audit_event SET action = 'x' WHERE id = 2")
    assert 'data-verify="ok"' in verify_box(admin)
    assert admin.form_post("/audit/verify", {}).status_code == 303
    box = verify_box(admin)
    assert 'data-verify="broken"' in box and "row 2: contents do not match its hash" in box
    assert server.get("/api/audit/verify")["bad_row"] == 2
    admin.close()


def test_the_audit_page_sees_rows_deleted_before_its_last_check(
    start_server: ServerFactory,
) -> None:
    """The checkpoint file deleted, the event the page checked last deleted (the end cut off) and
    an event before it deleted (the count up to it differs): each shows on the next load,
    without a walk of the whole chain."""
    server = start_server()
    for _ in range(3):
        server.post("/api/prune", {"dry_run": True})  # rows 2-4
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    wait_until(lambda: 'data-verify="ok"' in verify_box(admin), what="the first walk")
    (server.state_dir / "audit.checkpoints").unlink()
    box = verify_box(admin)
    assert 'data-verify="broken"' in box and "no checkpoint (the file was deleted?)" in box
    assert admin.form_post("/audit/verify", {}).status_code == 303  # a checkpoint is written
    assert server.cli("audit", "checkpoint").returncode == 0
    assert admin.form_post("/audit/verify", {}).status_code == 303
    assert 'data-verify="ok"' in verify_box(admin)
    # the end cut off: the event the page checked last is gone
    server.post("/api/prune", {"dry_run": True})
    head = int(server.get("/api/audit")["events"][0]["id"])
    assert f"up to event {head} " in verify_box(admin)
    columns = "id, at, actor, action, source, detail, prev_hash, hash"
    (row,) = db_execute(server.db_url, f"SELECT {columns} FROM audit_event WHERE id = {head}")
    db_execute(server.db_url, f"DELETE FROM audit_event WHERE id = {head}")
    box = verify_box(admin)
    assert 'data-verify="broken"' in box and f"row {head}: deleted after it was verified" in box
    names = columns.split(", ")
    db_execute(
        server.db_url,
        f"INSERT INTO audit_event ({columns}) VALUES ({', '.join(':' + n for n in names)})",
        dict(zip(names, row, strict=True)),
    )
    assert admin.form_post("/audit/verify", {}).status_code == 303
    assert 'data-verify="ok"' in verify_box(admin)
    # an event before that point deleted: the count up to it differs
    db_execute(server.db_url, "DELETE FROM audit_event WHERE id = 2")
    box = verify_box(admin)
    assert 'data-verify="broken"' in box and "(rows deleted or inserted before it)" in box
    admin.close()
