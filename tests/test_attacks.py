"""Hostile input: each attempt gets a clear error (or an honest empty answer) and changes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, db_execute

# Tables whose contents a refused request must leave alone (the audit log may note refusals).
WATCHED = ("job", "run", "runevent", "log_line", "user", "apitoken", "schedule", "agent")


def snapshot(server: ServerHandle) -> dict[str, list[tuple[object, ...]]]:
    return {t: sorted(db_execute(server.db_url, f'SELECT * FROM "{t}"'), key=repr) for t in WATCHED}


@pytest.fixture
def server(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with an agent and one run whose output has quotes, percent signs and FTS words."""
    server = start_server()
    start_agent(server, "att1")
    command = "echo 'needle 100% done'; echo 'a \"quoted\" OR NEAR(x) line'; echo under_score"
    job = server.submit("att1", command, name="plain")
    assert server.wait_job(job["job"]["id"])["job"]["state"] == "success"
    return server


@pytest.fixture
def console(server: ServerHandle) -> Iterator[Browserless]:
    client = Browserless(server)
    assert client.login("admin", admin_password(server)).status_code == 303
    yield client
    client.close()


SEARCHES = [
    '"',
    '" OR 1=1 --',
    "needle OR x",
    "NEAR(needle done)",
    "needle*",
    "'; DROP TABLE run; --",
    "%",
    "_",
    "\\",
    "text:needle",
]


def test_sql_and_fts_syntax_in_search_boxes(server: ServerHandle, console: Browserless) -> None:
    """Search boxes treat input as text: FTS operators, quotes, % and _ neither fail nor widen."""
    before = snapshot(server)
    run_id = server.get("/api/runs")["runs"][0]["id"]
    for needle in SEARCHES:
        page = console.http.get("/runs", params={"q": needle})
        assert page.status_code == 200 and 'role="alert"' not in page.text, needle
        page = console.http.get("/runs", params={"host": needle, "task": needle})
        assert page.status_code == 200 and "No run matches these filters." in page.text, needle
        for name in ("host", "task", "status"):
            resp = server.http.get("/api/runs", params={name: needle})
            if name == "status":
                assert resp.status_code == 400 and "unknown status" in resp.json()["error"]
            elif name == "task":  # task name or command, as literal text: never wider
                assert resp.status_code == 200, (name, needle)
                for run in resp.json()["runs"]:
                    assert needle in run["task"] or needle in run["command"], (needle, run)
            else:
                assert resp.status_code == 200 and resp.json()["runs"] == [], (name, needle)
        found = server.http.get(f"/api/runs/{run_id}/log", params={"grep": needle})
        assert found.status_code == 200
        assert all(needle in ln["text"] for ln in found.json()["lines"]), needle
        audit = server.http.get("/api/audit", params={"action": needle, "actor": needle})
        assert audit.status_code == 200 and audit.json()["events"] == []
        export = server.http.get("/api/export", params={"q": needle, "host": needle})
        assert export.status_code == 200 and export.text == ""
    # NUL would cut a filter to nothing (matching everything): the API and the console refuse it
    for url in (
        "/api/runs?task=%00",
        "/api/runs?host=a%00b",
        "/api/audit?action=%00",
        f"/api/runs/{run_id}/log?grep=%00",
        "/api/export?q=x%00",
    ):
        resp = server.http.get(url)
        assert resp.status_code == 400, url
        assert resp.json()["error"] == "a NUL character is not allowed in a query parameter"
    page = console.http.get("/runs", params={"q": "\x00"})
    assert page.status_code == 400 and "a NUL character is not allowed" in page.text
    # the phrase search still finds what is really there, and only that
    page = console.http.get("/runs", params={"q": "100% done"})
    assert f"/runs/{run_id}" in page.text
    assert server.http.get("/api/runs", params={"host": "att1", "task": "plain"}).json()["runs"]
    assert snapshot(server) == before


def test_path_traversal_in_export_paths(server: ServerHandle) -> None:
    """An export manifest is named by a 16-hex id: no request names a file outside the exports."""
    before = snapshot(server)
    for bad in (
        "..%2F..%2Fadmin.token",
        "..%2Fexport.key",
        "%2e%2e%2fsession.key",
        "....%2F%2Fadmin.password",
        "0123456789abcdeg",
    ):
        resp = server.http.get(f"/api/exports/{bad}/manifest")
        assert resp.status_code == 404, bad
        assert "token" not in resp.text.lower() or "not an export id" in resp.text
    assert server.http.get("/api/exports/../../admin.token/manifest").status_code == 404
    assert snapshot(server) == before


def test_oversized_request_bodies(server: ServerHandle, console: Browserless) -> None:
    """Bodies over the limits answer 413 before anything is parsed or stored."""
    before = snapshot(server)
    huge = "x" * (2 << 20)
    resp = server.http.post("/api/jobs", json={"pattern": "att1", "command": huge})
    assert resp.status_code == 413 and resp.json()["error"] == "request body too large"
    resp = httpx.post(server.url + "/api/login", json={"name": "admin", "password": huge})
    assert resp.status_code == 413
    resp = server.http.post("/api/users", json={"name": "big", "password": huge})
    assert resp.status_code == 413
    resp = server.http.post("/api/tokens", json={"name": huge[:200]})
    assert resp.status_code == 400 and "1-100 characters" in resp.json()["error"]
    resp = server.http.post("/api/tokens", json={"name": "a\r\nX-Evil: 1"})
    assert resp.status_code == 400 and "control characters" in resp.json()["error"]
    form = console.http.post(
        "/adhoc",
        data={"csrf": console.csrf, "pattern": "att1", "command": "x" * (100 << 10)},
    )
    assert form.status_code == 413
    assert snapshot(server) == before


def test_a_revoked_token_can_do_nothing(server: ServerHandle) -> None:
    """A revoked token is refused at once everywhere, and cannot make itself a new one."""
    made = server.post("/api/tokens", {"name": "leaked"})
    server.post(f"/api/tokens/{made['id']}/revoke")
    before = snapshot(server)
    leaked = httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {made['token']}"}, timeout=30
    )
    for method, path, body in (
        ("GET", "/api/runs", None),
        ("POST", "/api/jobs", {"pattern": "att1", "command": "id"}),
        ("POST", "/api/tokens", {"name": "again"}),
        ("POST", "/api/users", {"name": "eve", "password": "eve-password", "role": "admin"}),
        ("POST", "/api/prune", {}),
        ("GET", "/api/export", None),
    ):
        resp = leaked.request(method, path, json=body)
        assert resp.status_code == 401, (method, path)
        assert resp.json()["error"] == "invalid, expired or revoked token"
    leaked.close()
    assert snapshot(server) == before
