"""The sign-in rate limit against a real server: concurrent guesses, restarts, both doors."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.browser.support import Browserless, add_user
from tests.conftest import ServerFactory
from tests.support import ServerHandle

LIMIT = 5


@pytest.fixture
def server(start_server: ServerFactory) -> ServerHandle:
    server = start_server()
    add_user(server, "amy", "auditor", "auditor-pass-1")
    return server


def api_login(server: ServerHandle, password: str) -> int:
    with httpx.Client(base_url=server.url, timeout=60) as anon:
        return anon.post("/api/login", json={"name": "amy", "password": password}).status_code


def form_login(server: ServerHandle, password: str) -> int:
    console = Browserless(server)
    try:
        return console.login("amy", password).status_code
    finally:
        console.close()


def audit_count(server: ServerHandle, action: str) -> int:
    events: list[dict[str, Any]] = server.get("/api/audit", action=action, limit=500)["events"]
    return len(events)


def test_concurrent_wrong_passwords_check_no_more_than_the_limit(server: ServerHandle) -> None:
    """Twenty wrong passwords at once, through the API and the console form: at most the limit
    of them are checked (401), the others are refused unchecked (429)."""
    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [
            pool.submit(api_login if i % 2 else form_login, server, f"guess-{i}") for i in range(20)
        ]
        statuses = [f.result() for f in futures]
    assert sorted(set(statuses)) == [401, 429], statuses
    assert statuses.count(401) <= LIMIT, statuses
    assert audit_count(server, "login.failed") == statuses.count(401)
    # the right password is refused too until the window has passed
    assert api_login(server, "auditor-pass-1") == 429


def test_the_count_survives_a_restart(server: ServerHandle, start_server: ServerFactory) -> None:
    """Failures counted before a restart still count after it."""
    for _ in range(LIMIT):
        assert api_login(server, "guess") == 401
    server.proc.stop()
    again = start_server(state_dir=server.state_dir)
    assert api_login(again, "auditor-pass-1") == 429
    assert form_login(again, "auditor-pass-1") == 429


def test_a_correct_password_clears_the_users_failures(server: ServerHandle) -> None:
    """A sign-in that succeeds does not count, and clears the user's earlier failures."""
    for _ in range(LIMIT - 1):
        assert api_login(server, "guess") == 401
    assert api_login(server, "auditor-pass-1") == 201
    # the address still holds its four failures: one more, then it is at the limit
    assert api_login(server, "guess") == 401
    assert api_login(server, "auditor-pass-1") == 429
