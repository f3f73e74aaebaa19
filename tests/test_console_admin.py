"""The console's admin and auditor pages on a real server: users, API tokens, the audit log.
Each action goes through a form with the CSRF field, is audited, and is refused to non-admins."""

from __future__ import annotations

import re

import httpx

from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import ServerFactory

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
