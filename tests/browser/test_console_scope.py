"""A scoped viewer in a real Chromium sees none of another group's runs: dashboard, runs list
and its search, a job's live grid, a run page, and the runs list's export links."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle

pytestmark = pytest.mark.browser


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1 (group web) and db1 (group db), and viewer vera (scope web)."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n\n[db]\ndb1\n")
    server = start_server(inventory)
    for name in ("web1", "db1"):
        start_agent(server, name)
    body = {"name": "vera", "role": "viewer", "password": "vera-pass-12", "scope": "web"}
    server.post("/api/users", body)
    return server


def test_scoped_viewer_sees_only_their_group_in_the_console(
    fleet: ServerHandle, browser: Any, consoles: list, tmp_path: Path
) -> None:
    """Signed in as a viewer scoped to `web`: the dashboard counts one agent and no failure,
    the runs list and its output search hold web1 alone, a job on both groups shows (and
    follows live) only web1, db1's run is not found, and the export links give web1 alone."""
    failed = fleet.wait_job(fleet.submit("db", "echo db-secret-text; exit 3")["job"]["id"])
    gate = tmp_path / "gate"
    both = fleet.submit("all", f"while [ ! -e {gate} ]; do sleep 0.05; done; echo db-secret-text")
    console = Console(browser, fleet, "vera", "vera-pass-12")
    consoles.append(console)
    page = console.page
    assert page.get_by_test_id("agents-online").locator("b").inner_text() == "1"
    assert "No recent failures." in page.content()

    page.goto(f"/jobs/{both['job']['id']}")
    assert page.locator("#status-grid tbody tr").all_inner_texts()[0].startswith("web1")
    assert page.locator("#status-grid tbody tr").count() == 1
    gate.touch()
    page.get_by_test_id("job-state").get_by_text("success").wait_for()
    assert page.locator("#status-grid tbody tr").count() == 1
    assert "db1" not in page.locator("main").inner_text()

    page.goto("/runs?q=db-secret-text")
    hosts = page.locator("table.runs tbody td:nth-child(4)").all_inner_texts()
    assert hosts and set(hosts) == {"web1"}, hosts
    for link in ("#export-csv", "#export-jsonl"):
        href = page.locator(link).get_attribute("href")
        text = page.request.get(href).text()
        assert "web1" in text and "db1" not in text, link
    records = [
        json.loads(x) for x in page.request.get("/api/export?format=jsonl").text().splitlines()
    ]
    assert {r["host"] for r in records} == {"web1"}

    response = page.goto(f"/runs/{failed['runs'][0]['id']}")
    assert response is not None and response.status == 404
    assert re.search(r"no run \d+", page.locator("main").inner_text())
    assert "db-secret-text" not in page.content()
    assert not [e for e in console.errors if "db1" in e]
