"""Console sign-in, sessions, CSRF and roles, against a real server over HTTP."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from starlette.routing import Route

from easytask.web.app import routes
from easytask.web.auth import SessionAuth
from tests.browser.support import COOKIE, Browserless, add_user, admin_password, session_payload
from tests.conftest import ServerFactory
from tests.support import ServerHandle, db_execute

SAMPLE_PARAMS = {"run_id": "1", "job_id": "1", "name": "web1", "action": "accept"}
PUBLIC = {
    ("GET", "/api/health"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/api/login"),
    ("GET", "/healthz"),  # liveness and readiness for orchestrators: no secrets in them
    ("GET", "/readyz"),
}
MACHINE = {"/metrics"}  # read by scrapers with a token: 401 like the API, not a redirect


def route_table() -> list[tuple[str, str]]:
    """(method, path) of every route the application serves (HEAD aside)."""
    stub = SimpleNamespace()
    table = []
    for route in routes(stub, SessionAuth(stub, b"k")):  # type: ignore[arg-type]
        if isinstance(route, Route):
            table += [(m, route.path) for m in sorted(route.methods or ()) if m != "HEAD"]
    return table


def concrete(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS.get(m.group(1), "1"), path)


@pytest.fixture
def server(start_server: ServerFactory) -> ServerHandle:
    return start_server()


@pytest.fixture
def admin(server: ServerHandle):
    client = Browserless(server)
    assert client.login("admin", admin_password(server)).status_code == 303
    yield client
    client.close()


def test_every_route_needs_sign_in(server: ServerHandle) -> None:
    """Anonymous: every /api route answers 401 JSON, every page redirects to /login."""
    table = route_table()
    assert ("GET", "/api/runs/{run_id}/events") in table and ("GET", "/runs") in table
    anon = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
    checked = 0
    for method, path in table:
        if (method, path) in PUBLIC:
            continue
        url = concrete(path)
        resp = anon.request(method, url, json={} if method == "POST" else None)
        if path.startswith("/api/") or path in MACHINE:
            assert resp.status_code == 401, (method, url, resp.status_code)
            assert "error" in resp.json()
        else:
            assert resp.status_code == 303, (method, url, resp.status_code)
            assert resp.headers["location"].startswith("/login?next="), (method, url)
        checked += 1
    assert checked >= 25
    assert anon.get("/api/health").json() == {"ok": True}
    assert anon.get("/static/console.css").status_code == 200
    # a bad or foreign cookie is the same as none
    anon.cookies.set(COOKIE, "forged.value.sig")
    assert anon.get("/api/runs").status_code == 401
    assert anon.get("/runs").status_code == 303
    anon.close()


def test_viewer_gets_403_on_operator_and_admin_actions(server: ServerHandle) -> None:
    """A viewer reads everything but every state-changing call answers 403, API and forms."""
    add_user(server, "vera", "viewer", "viewer-pass-1")
    add_user(server, "otto", "operator", "operator-pass-1")
    viewer = Browserless(server)
    assert viewer.login("vera", "viewer-pass-1").status_code == 303
    for path in ("/", "/runs", "/adhoc", "/agents", "/playbooks"):
        assert viewer.http.get(path).status_code == 200, path
    assert viewer.http.get("/api/runs").status_code == 200
    assert viewer.http.get("/api/whoami").json() == {"name": "vera", "role": "viewer"}
    api_actions = [
        "/api/jobs",
        "/api/uploads?name=x.sh",
        "/api/jobs/1/kill",
        "/api/runs/1/kill",
        "/api/agents/web1/accept",
        "/api/agents/web1/revoke",
        "/api/agents/tokens",
        "/api/users",
    ]
    for path in api_actions:
        resp = viewer.api_post(path, {"pattern": "all", "command": "true"})
        assert resp.status_code == 403, (path, resp.text)
        assert "may not" in resp.json()["error"]
    assert viewer.http.get("/api/users").status_code == 403
    for path in ("/adhoc", "/agents/web1/accept", "/agents/web1/revoke"):
        resp = viewer.form_post(path, {"pattern": "all", "command": "true"})
        assert resp.status_code == 403, (path, resp.status_code)
        assert "may not" in resp.text
    viewer.close()

    operator = Browserless(server)
    assert operator.login("otto", "operator-pass-1").status_code == 303
    # an operator may submit (400 here: no host matches) but not manage agents or users
    assert (
        operator.api_post("/api/jobs", {"pattern": "nohost", "command": "true"}).status_code == 400
    )
    assert operator.api_post("/api/agents/web1/accept").status_code == 403
    assert operator.api_post("/api/users", {"name": "x"}).status_code == 403
    assert operator.form_post("/agents/web1/accept", {}).status_code == 403
    operator.close()


def test_csrf_is_required_for_browser_state_changes(
    server: ServerHandle, admin: Browserless
) -> None:
    """With the session cookie, a POST without the CSRF token (header or field) is refused."""
    body = {"pattern": "nohost", "command": "true"}
    missing = admin.api_post("/api/jobs", body, csrf=False)
    assert missing.status_code == 403 and "CSRF" in missing.json()["error"]
    wrong = admin.http.post("/api/jobs", json=body, headers={"x-csrf-token": "x" * 32})
    assert wrong.status_code == 403
    # with the token the request goes through (and fails on its merits: no such host)
    assert admin.api_post("/api/jobs", body).status_code == 400
    assert admin.api_post("/api/agents/tokens", {"uses": 1}).status_code == 201
    assert admin.form_post("/adhoc", body, csrf=False).status_code == 403
    upload = admin.http.post("/api/uploads", params={"name": "x.sh"}, content=b"echo hi\n")
    assert upload.status_code == 403 and "CSRF" in upload.json()["error"]
    assert admin.form_post("/agents/web1/accept", {}, csrf=False).status_code == 403
    assert admin.form_post("/logout", {}, csrf=False).status_code == 403
    assert admin.http.get("/").status_code == 200  # still signed in
    # bearer-token calls (the CLI) need no CSRF token
    assert server.http.post("/api/agents/tokens", json={"uses": 1}).status_code == 201
    # a bearer token wins over a cookie: a bad token is refused even with a valid session
    bad = admin.http.post(
        "/api/agents/tokens",
        json={},
        headers={"authorization": "Bearer nope", "x-csrf-token": admin.csrf},
    )
    assert bad.status_code == 401


def test_login_form_needs_its_csrf_token(server: ServerHandle) -> None:
    """A sign-in POST without the form's token (a cross-site login) is refused."""
    client = httpx.Client(base_url=server.url, timeout=30)
    resp = client.post("/login", data={"username": "admin", "password": admin_password(server)})
    assert resp.status_code == 403
    assert session_payload(client.cookies[COOKIE])["u"] is None
    assert client.get("/", follow_redirects=False).status_code == 303
    client.close()


def test_login_rotates_the_session_and_sets_safe_cookie_flags(
    server: ServerHandle, start_server: ServerFactory
) -> None:
    """Sign-in issues a new session id and CSRF token; the cookie is HttpOnly and SameSite=Lax."""
    client = Browserless(server)
    page = client.http.get("/login")
    before = session_payload(client.http.cookies[COOKIE])
    assert before["u"] is None
    assert "secure" not in page.headers["set-cookie"].lower()
    resp = client.http.post(
        "/login",
        data={
            "csrf": before["c"],
            "username": "admin",
            "password": admin_password(server),
            "next": "/runs?x=1",
        },
    )
    assert resp.status_code == 303
    assert resp.headers["location"] == "/runs?x=1"
    header = resp.headers["set-cookie"].lower()
    assert "httponly" in header and "samesite=lax" in header and "path=/" in header
    after = session_payload(client.http.cookies[COOKIE])
    assert after["u"] is not None
    assert after["s"] != before["s"] and after["c"] != before["c"]
    # a client cannot claim https for itself: the header counts only from --trusted-proxy
    claimed = httpx.get(server.url + "/login", headers={"x-forwarded-proto": "https"})
    assert "secure" not in claimed.headers["set-cookie"].lower()
    # over https (here: the trusted proxy says so) the cookie is also Secure
    proxied = start_server(None, "--trusted-proxy", "127.0.0.1")
    https = httpx.get(proxied.url + "/login", headers={"x-forwarded-proto": "https"})
    assert "secure" in https.headers["set-cookie"].lower()
    client.close()


def test_wrong_password_and_open_redirect_are_refused(server: ServerHandle) -> None:
    """Bad credentials answer 401 without a session; `next` only ever points inside the site."""
    client = Browserless(server)
    assert client.login("admin", "wrong").status_code == 401
    assert client.login("nobody", "wrong").status_code == 401
    assert client.http.get("/").status_code == 303
    client.close()
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        fresh = Browserless(server)
        resp = fresh.login("admin", admin_password(server), next_url=target)
        assert resp.status_code == 303 and resp.headers["location"] == "/", target
        fresh.close()


def test_logout_ends_the_session_even_if_the_cookie_is_replayed(
    server: ServerHandle, admin: Browserless
) -> None:
    """After logout the old cookie no longer works for pages or the API."""
    stolen = admin.http.cookies[COOKIE]
    resp = admin.form_post("/logout", {})
    assert resp.status_code == 303 and resp.headers["location"] == "/login"
    replay = httpx.Client(base_url=server.url, timeout=30, cookies={COOKIE: stolen})
    assert replay.get("/").status_code == 303
    assert replay.get("/api/runs").status_code == 401
    replay.close()


def test_logout_holds_after_a_server_restart(start_server: ServerFactory, tmp_path: Path) -> None:
    """A cookie logged out before a restart stays refused after it; another session lives on."""
    state = tmp_path / "state"
    server = start_server(state_dir=state)
    leaving, staying = Browserless(server), Browserless(server)
    for client in (leaving, staying):
        assert client.login("admin", admin_password(server)).status_code == 303
    stolen = leaving.http.cookies[COOKIE]
    kept = staying.http.cookies[COOKIE]
    assert leaving.form_post("/logout", {}).status_code == 303
    leaving.close()
    staying.close()
    server.proc.stop()
    again = start_server(state_dir=state)
    replay = httpx.Client(base_url=again.url, timeout=30, cookies={COOKIE: stolen})
    assert replay.get("/").status_code == 303
    assert replay.get("/api/runs").status_code == 401
    replay.close()
    other = httpx.Client(base_url=again.url, timeout=30, cookies={COOKIE: kept})
    assert other.get("/").status_code == 200
    assert other.get("/api/runs").status_code == 200
    other.close()
    rows = db_execute(again.db_url, "SELECT sid_hash FROM revoked_session")
    # only the hash of the session id is kept, and only for the signed-in session that ended
    assert len(rows) == 1 and session_payload(stolen)["s"] not in rows[0][0]


def test_first_start_sets_an_argon2_admin_password_and_a_private_session_key(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """admin.password signs in; the hash is argon2id; session.key is 0600 and survives restarts."""
    state = tmp_path / "state"
    server = start_server(state_dir=state)
    mode = stat.S_IMODE(os.stat(state / "session.key").st_mode)
    assert mode == 0o600
    ((hash_,),) = db_execute(
        server.db_url, "SELECT password_hash FROM \"user\" WHERE name = 'admin'"
    )
    assert hash_.startswith("$argon2id$")
    assert admin_password(server) not in hash_
    client = Browserless(server)
    assert client.login("admin", admin_password(server)).status_code == 303
    cookie = client.http.cookies[COOKIE]
    key = (state / "session.key").read_text()
    client.close()
    server.proc.stop()
    again = start_server(state_dir=state)
    assert (state / "session.key").read_text() == key
    kept = httpx.Client(base_url=again.url, timeout=30, cookies={COOKIE: cookie})
    assert kept.get("/").status_code == 200
    kept.close()


def test_users_api_validates_and_never_returns_hashes(server: ServerHandle) -> None:
    """POST /api/users checks name, role and password length; names are unique."""
    http = server.http
    assert (
        http.post(
            "/api/users", json={"name": "amy", "role": "auditor", "password": "long-enough"}
        ).status_code
        == 201
    )
    assert (
        http.post(
            "/api/users", json={"name": "amy", "role": "viewer", "password": "long-enough"}
        ).status_code
        == 409
    )
    assert (
        http.post(
            "/api/users", json={"name": "bob", "role": "root", "password": "long-enough"}
        ).status_code
        == 400
    )
    assert http.post("/api/users", json={"name": "bob", "password": "short"}).status_code == 400
    assert (
        http.post("/api/users", json={"name": "../x", "password": "long-enough"}).status_code == 400
    )
    users = http.get("/api/users").json()["users"]
    assert {u["name"]: u["role"] for u in users} == {"admin": "admin", "amy": "auditor"}
    assert all("hash" not in str(u) for u in users)
    auditor = Browserless(server)
    assert auditor.login("amy", "long-enough").status_code == 303
    assert auditor.http.get("/runs").status_code == 200
    assert auditor.api_post("/api/jobs", {"pattern": "all", "command": "true"}).status_code == 403
    auditor.close()
