"""Accounts, API tokens, sign-in rate limits and host scopes, against a real server."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

from easytask.config import load_settings
from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import ServerFactory, write
from tests.support import ServerHandle, db_execute, wait_until


@pytest.fixture
def server(start_server: ServerFactory, tmp_path: Path) -> ServerHandle:
    inventory = write(
        tmp_path / "hosts.ini",
        """\
        [web]
        web1
        web2
        [db]
        db1
        [all:vars]
        easytask_connection=agent
        """,
    )
    return start_server(inventory)


def audit_actions(server: ServerHandle, action: str) -> list[dict[str, Any]]:
    return list(server.get("/api/audit", action=action, limit=500)["events"])


def bearer(server: ServerHandle, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=30
    )


def test_users_cli_adds_changes_and_disables(server: ServerHandle) -> None:
    """users add/list/passwd/set/disable work through the API; a disabled user's token dies at once."""
    added = server.cli(
        "users",
        "add",
        "otto",
        "--role",
        "operator",
        "--scope",
        "web",
        "--password-stdin",
        input="operator-pass-1\n",
    )
    assert added.returncode == 0, added.stderr
    listing = server.cli("users", "list").stdout
    assert "otto" in listing and "operator" in listing and "web" in listing
    token = server.post("/api/tokens", {"name": "otto-ci", "user": "otto"})["token"]
    otto = bearer(server, token)
    assert otto.get("/api/whoami").json() == {"name": "otto", "role": "operator"}
    # an operator may change only its own password, and nothing else
    assert otto.post("/api/users/otto", json={"role": "admin"}).status_code == 403
    assert otto.post("/api/users/admin", json={"password": "x" * 12}).status_code == 403
    assert (
        server.cli("users", "passwd", "otto", "--password-stdin", input="new-pass-22\n").returncode
        == 0
    )
    client = Browserless(server)
    assert client.login("otto", "new-pass-22").status_code == 303
    client.close()
    changed = server.cli("users", "set", "otto", "--scope", "")
    assert changed.returncode == 0 and "scope all" in changed.stdout
    assert server.cli("users", "disable", "otto").returncode == 0
    assert otto.get("/api/whoami").status_code == 401
    assert server.cli("users", "disable", "admin").returncode == 2  # never yourself
    short = server.cli("users", "add", "bob", "--password-stdin", input="short\n")
    assert short.returncode == 2
    assert "password must be" in short.stderr
    actions = [e["detail"] for e in audit_actions(server, "user.")]
    assert {"user": "otto", "disabled": True} in actions
    assert {"user": "otto", "password": "changed", "tokens_revoked": 1} in actions
    otto.close()


def test_tokens_are_named_hashed_revocable_and_record_use(server: ServerHandle) -> None:
    """A token is shown once, stored as a hash, lists its last use, and stops working when revoked."""
    made = server.cli("tokens", "create", "ci", "--ttl", "30d")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert secret.startswith("et_")
    ci = bearer(server, secret)
    assert ci.get("/api/whoami").status_code == 200
    tokens = server.get("/api/tokens")["tokens"]
    row = next(t for t in tokens if t["name"] == "ci")
    assert row["expires_at"] and row["last_used"] and not row["revoked"]
    stored = [r[0] for r in db_execute(server.db_url, "SELECT token_hash FROM apitoken")]
    assert secret not in stored and all(len(h) == 64 for h in stored)
    revoked = server.cli("tokens", "revoke", str(row["id"]))
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    resp = ci.get("/api/whoami")
    assert resp.status_code == 401 and "revoked" in resp.json()["error"]
    assert "revoked" in server.cli("tokens", "list").stdout
    assert [e["detail"]["name"] for e in audit_actions(server, "token.revoke")] == ["ci"]
    ci.close()


def test_login_stores_a_private_token(server: ServerHandle, tmp_path: Path) -> None:
    """`easytask login` trades name and password for a named token in a 0600 config file."""
    add_user(server, "vera", "viewer", "viewer-pass-1")
    config = tmp_path / "cfg" / "config.toml"
    result = server.cli(
        "--url",
        server.url,
        "login",
        "--user",
        "vera",
        "--password-stdin",
        "--config",
        str(config),
        "--ttl",
        "1d",
        input="viewer-pass-1\n",
    )
    assert result.returncode == 0, result.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    settings = load_settings({}, env={"EASYTASK_CONFIG": str(config)})
    assert settings.url == server.url and settings.token
    vera = bearer(server, settings.token)
    assert vera.get("/api/whoami").json()["name"] == "vera"
    vera.close()
    tokens = server.get("/api/tokens", user="vera")["tokens"]
    assert len(tokens) == 1 and tokens[0]["name"].startswith("login ")
    wrong = server.cli(
        "--url",
        server.url,
        "login",
        "--user",
        "vera",
        "--password-stdin",
        "--config",
        str(tmp_path / "other.toml"),
        input="nope\n",
    )
    assert wrong.returncode != 0 and "wrong user name or password" in wrong.stderr
    assert not (tmp_path / "other.toml").exists()
    assert any(e["detail"]["user"] == "vera" for e in audit_actions(server, "login.failed"))
    assert any(e["detail"]["user"] == "vera" for e in audit_actions(server, "login.ok"))


def test_failed_logins_are_rate_limited(server: ServerHandle) -> None:
    """Five failures a minute per user (or per address) then 429 with Retry-After, even for the right password."""
    add_user(server, "amy", "auditor", "auditor-pass-1")
    anon = httpx.Client(base_url=server.url, timeout=30)
    for _ in range(5):
        resp = anon.post("/api/login", json={"name": "amy", "password": "guess"})
        assert resp.status_code == 401
    resp = anon.post("/api/login", json={"name": "amy", "password": "auditor-pass-1"})
    assert resp.status_code == 429
    assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert "too many failed sign-ins" in resp.json()["error"]
    # the console form shares the count: blocked there too
    console = Browserless(server)
    assert console.login("amy", "auditor-pass-1").status_code == 429
    # the address is over its limit as well: other names from it are refused
    assert console.login("admin", admin_password(server)).status_code == 429
    console.close()
    assert len(audit_actions(server, "login.failed")) == 5
    assert len(audit_actions(server, "login.blocked")) >= 3
    assert server.get("/api/tokens", user="amy")["tokens"] == []
    anon.close()


def test_forwarded_for_cannot_dodge_the_address_limit(server: ServerHandle) -> None:
    """A client that claims another address in X-Forwarded-For is still counted as itself."""
    anon = httpx.Client(base_url=server.url, timeout=30)
    for i in range(5):
        resp = anon.post(
            "/api/login",
            json={"name": f"nobody{i}", "password": "guess"},
            headers={"X-Forwarded-For": f"203.0.113.{i}"},
        )
        assert resp.status_code == 401
    resp = anon.post(
        "/api/login",
        json={"name": "nobody9", "password": "guess"},
        headers={"X-Forwarded-For": "203.0.113.99"},
    )
    assert resp.status_code == 429
    sources = {e["source"] for e in audit_actions(server, "login.failed")}
    assert all("127.0.0.1" in s and "203.0.113" not in s for s in sources), sources
    anon.close()


def test_scoped_operator_is_refused_whole(server: ServerHandle, tmp_path: Path) -> None:
    """An operator scoped to `web` may not touch db1: ad hoc, file ops and playbooks are refused whole."""
    server.post(
        "/api/users",
        {"name": "otto", "role": "operator", "password": "operator-pass-1", "scope": "web"},
    )
    otto = bearer(server, server.post("/api/tokens", {"name": "t", "user": "otto"})["token"])
    jobs_before = server.get("/api/runs")["runs"]
    resp = otto.post("/api/jobs", json={"pattern": "all", "command": "uptime"})
    assert resp.status_code == 403
    assert resp.json()["error"] == "refused: 1 host(s) outside your scope 'web': db1"
    copy = {"name": "f.txt", "data": "aGk=", "dest": "/tmp/f.txt"}
    resp = otto.post("/api/jobs", json={"pattern": "db1", "kind": "copy", "copy": copy})
    assert resp.status_code == 403 and "db1" in resp.json()["error"]
    book = "name: p\nhosts: all\ntasks:\n  - name: t\n    command: uptime\n"
    resp = otto.post("/api/playbooks/run", json={"text": book})
    assert resp.status_code == 403 and "db1" in resp.json()["error"]
    assert server.get("/api/runs")["runs"] == jobs_before
    refused = audit_actions(server, "job.refused")
    assert [e["detail"]["outside"] for e in refused] == [["db1"]] * 3
    ok = otto.post("/api/jobs", json={"pattern": "web", "command": "true", "pending_timeout": "1s"})
    assert ok.status_code == 201
    assert {r["host"] for r in ok.json()["runs"]} == {"web1", "web2"}
    bad = server.http.post("/api/users", json={"name": "x", "password": "p" * 9, "scope": "web:["})
    assert bad.status_code == 400 and bad.json()["error"].startswith("scope: ")
    otto.close()


def test_scope_applies_in_the_console_too(server: ServerHandle) -> None:
    """The console's ad hoc form refuses a scoped operator's out-of-scope hosts with the same message."""
    add_user(server, "otto", "operator", "operator-pass-1")
    server.post("/api/users/otto", {"scope": "web1"})
    console = Browserless(server)
    assert console.login("otto", "operator-pass-1").status_code == 303
    console.refresh_csrf()
    resp = console.form_post("/adhoc", {"pattern": "web", "command": "uptime"})
    assert resp.status_code == 403
    assert "refused: 1 host(s) outside your scope &#39;web1&#39;: web2" in resp.text
    console.close()
    assert server.get("/api/runs")["runs"] == []


def test_expired_token_is_refused(server: ServerHandle) -> None:
    """A token past its ttl answers 401 like a revoked one."""
    made = server.post("/api/tokens", {"name": "short", "ttl": "1s"})
    client = bearer(server, made["token"])
    wait_until(lambda: client.get("/api/whoami").status_code == 401, timeout=30, what="expiry")
    assert client.get("/api/whoami").json()["error"] == "invalid, expired or revoked token"
    client.close()


def test_schema_gains_new_columns(tmp_path: Path) -> None:
    """A database made before user scopes gets the column (empty) when the server opens it."""
    from easytask.store.db import Store, sqlite_url

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE user (id INTEGER PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, "
            "password_hash VARCHAR NOT NULL, role VARCHAR NOT NULL, disabled BOOLEAN NOT NULL, "
            "created_at DATETIME NOT NULL)"
        )
        db.execute(
            "INSERT INTO user (name, password_hash, role, disabled, created_at) "
            "VALUES ('old', '', 'operator', 0, '2024-01-01 00:00:00')"
        )
    store = Store(sqlite_url(path))
    try:
        store.create_schema()
        user = store.get_user("old")
        assert user is not None and user.scope == "" and user.role == "operator"
    finally:
        store.close()
