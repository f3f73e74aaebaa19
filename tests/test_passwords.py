"""Password changes and token lifetimes, against a real server: a stolen token can neither set a
new password nor outlive one, nor mint a token that never expires."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import ServerFactory
from tests.support import ServerHandle
from tests.support.procs import easytask_cmd


@pytest.fixture
def server(start_server: ServerFactory) -> ServerHandle:
    return start_server()


def bearer(server: ServerHandle, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=30
    )


def cli_as(
    server: ServerHandle, token: str, *args: str, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real CLI against the server with another user's token."""
    env = {**server.env(), "EASYTASK_TOKEN": token}
    return subprocess.run(
        easytask_cmd(*args), env=env, capture_output=True, text=True, timeout=60, input=input
    )


def updates(server: ServerHandle) -> list[dict[str, Any]]:
    events = server.get("/api/audit", action="user.update", limit=100)["events"]
    return [e["detail"] for e in events]


def test_own_password_needs_the_current_one_and_ends_tokens_and_sessions(
    server: ServerHandle,
) -> None:
    """A token alone cannot set its user's password; a change with the current password ends
    every token and console session of that user, audited with the count."""
    add_user(server, "otto", "operator", "operator-pass-1")
    stolen = bearer(server, server.post("/api/tokens", {"name": "ci", "user": "otto"})["token"])
    laptop = bearer(server, server.post("/api/tokens", {"name": "l", "user": "otto"})["token"])
    resp = stolen.post("/api/users/otto", json={"password": "attacker-pass"})
    assert resp.status_code == 400 and "current" in resp.json()["error"]
    resp = stolen.post(
        "/api/users/otto", json={"password": "attacker-pass", "current_password": "guess-123"}
    )
    assert resp.status_code == 403 and resp.json()["error"] == "the current password is wrong"
    console = Browserless(server)
    assert console.login("otto", "operator-pass-1").status_code == 303  # unchanged
    assert console.http.get("/api/whoami").status_code == 200
    resp = laptop.post(
        "/api/users/otto",
        json={"password": "operator-pass-2", "current_password": "operator-pass-1"},
    )
    assert resp.status_code == 200, resp.text
    for client in (stolen, laptop):
        assert client.get("/api/whoami").status_code == 401
    assert console.http.get("/api/whoami").status_code == 401
    assert {"user": "otto", "password": "changed", "tokens_revoked": 2} in updates(server)
    # an admin's own password needs the current one too
    resp = server.http.post("/api/users/admin", json={"password": "admin-pass-99"})
    assert resp.status_code == 400
    console.close()
    stolen.close()
    laptop.close()


def test_cli_passwd_asks_the_current_password_for_your_own(server: ServerHandle) -> None:
    """`users passwd` of your own account reads the current password, then the new one; the
    token it used ends with the others."""
    add_user(server, "vera", "viewer", "viewer-pass-1")
    token = server.post("/api/tokens", {"name": "cli", "user": "vera"})["token"]
    wrong = cli_as(
        server,
        token,
        "users",
        "passwd",
        "vera",
        "--password-stdin",
        input="nope-nope\nnew-pass-2\n",
    )
    assert wrong.returncode != 0 and "current password is wrong" in wrong.stderr
    done = cli_as(
        server,
        token,
        "users",
        "passwd",
        "vera",
        "--password-stdin",
        input="viewer-pass-1\nviewer-pass-2\n",
    )
    assert done.returncode == 0, done.stderr
    assert "easytask login" in done.stderr
    assert cli_as(server, token, "users", "passwd", "vera").returncode != 0  # the token ended
    console = Browserless(server)
    assert console.login("vera", "viewer-pass-2").status_code == 303
    console.close()


def test_admin_reset_needs_no_current_password_and_ends_the_users_tokens(
    server: ServerHandle,
) -> None:
    """An admin sets another user's password without theirs; that user's tokens end, the
    admin's do not."""
    add_user(server, "otto", "operator", "operator-pass-1")
    otto = bearer(server, server.post("/api/tokens", {"name": "ci", "user": "otto"})["token"])
    reset = server.cli("users", "passwd", "otto", "--password-stdin", input="reset-pass-1\n")
    assert reset.returncode == 0, reset.stderr
    assert otto.get("/api/whoami").status_code == 401
    assert server.http.get("/api/whoami").status_code == 200
    tokens = server.get("/api/tokens", user="otto")["tokens"]
    assert [t["revoked"] for t in tokens] == [True]
    otto.close()


def expires_in(row: dict[str, Any]) -> timedelta:
    return datetime.fromisoformat(row["expires_at"]) - datetime.now(UTC)


def test_tokens_live_at_most_the_servers_maximum(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """With --token-max-ttl 2d a token asked without a ttl gets 2d, a longer one is refused with
    400, through /api/tokens and /api/login; the initial admin token expires too."""
    server = start_server(None, "--token-max-ttl", "2d")
    day = timedelta(days=1)
    plain = server.post("/api/tokens", {"name": "plain"})
    assert 2 * day - timedelta(minutes=5) < expires_in(plain) <= 2 * day
    resp = server.http.post("/api/tokens", json={"name": "long", "ttl": "3d"})
    assert resp.status_code == 400
    assert resp.json()["error"] == "ttl: at most 2d (the server's token_max_ttl), got 3d"
    short = server.post("/api/tokens", {"name": "short", "ttl": "1h"})
    assert expires_in(short) <= timedelta(hours=1)
    anon = httpx.Client(base_url=server.url, timeout=30)
    login = {"name": "admin", "password": admin_password(server)}
    resp = anon.post("/api/login", json={**login, "ttl": "30d"})
    assert resp.status_code == 400 and "at most 2d" in resp.json()["error"]
    resp = anon.post("/api/login", json=login)
    assert resp.status_code == 201 and expires_in(resp.json()) <= 2 * day
    anon.close()
    names = {t["name"]: t for t in server.get("/api/tokens")["tokens"]}
    assert "long" not in names
    assert expires_in(names["initial admin token"]) <= 2 * day
