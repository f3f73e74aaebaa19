"""The job page's grouped view in a real Chromium: hosts with the same output folded together."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle

pytestmark = pytest.mark.browser


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web01, web02, web03 and db1."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb[01:03]\n\n[db]\ndb1\n")
    server = start_server(inventory)
    for name in ("web01", "web02", "web03", "db1"):
        start_agent(server, name)
    return server


def groups_on(page: Any) -> list[tuple[str, str, str]]:
    """(host list, exit, output) of each group block on the page."""
    return [
        (
            block.get_by_test_id("group-hosts").inner_text(),
            block.get_by_test_id("group-exit").inner_text(),
            block.locator("pre").inner_text() if block.locator("pre").count() else "",
        )
        for block in page.get_by_test_id("group").all()
    ]


def test_job_page_groups_hosts_by_output(fleet: ServerHandle, browser: Any, consoles: list) -> None:
    """The grouped view folds web[01:03] under one host range, db1 (other output and exit code)
    apart; markup and escapes in the output are shown as text; the per-host link goes back."""
    command = (
        "echo '<b>same</b>'; if [ {{ inventory_hostname }} = db1 ]; then echo broke >&2; exit 2; fi"
    )
    body = {"pattern": "all", "command": command, "extra_vars": {"x": 1}}
    job = fleet.post("/api/jobs", body)
    done = fleet.wait_job(job["job"]["id"])
    hosts = {r["host"]: r["state"] for r in done["runs"]}
    assert hosts == {"web01": "success", "web02": "success", "web03": "success", "db1": "failed"}
    console = Console(browser, fleet)
    consoles.append(console)
    page = console.page
    page.goto(f"/jobs/{job['job']['id']}")
    page.get_by_test_id("grouped-link").click()
    page.wait_for_url(re.compile(r"/jobs/\d+\?view=grouped$"))
    assert groups_on(page) == [
        ("web[01:03]", "exit 0", "<b>same</b>"),
        ("db1", "exit 2", "<b>same</b>\nbroke"),
    ]
    assert page.locator("#grouped b").count() == 0  # markup is text, not bold
    assert page.get_by_test_id("group").nth(1).locator(".stderr").inner_text() == "broke"
    assert page.get_by_test_id("grouped-cut").count() == 0
    screenshot(page, "job-grouped")
    page.get_by_test_id("per-host-link").click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    assert page.get_by_test_id("grouped").count() == 0
    assert page.locator("#status-grid tbody tr").count() == 4


def test_grouped_view_is_bounded_and_says_so(
    fleet: ServerHandle, browser: Any, consoles: list
) -> None:
    """Past 1,000 lines (fewer for a big job) a host's output is compared and shown only up to
    there, and the page says which part was compared; hosts alike up to there fold together."""
    command = "seq 1 1100; [ {{ inventory_hostname }} = web01 ] && echo tail-differs; true"
    body = {"pattern": "web", "command": command, "extra_vars": {"x": 1}}
    job = fleet.post("/api/jobs", body)
    fleet.wait_job(job["job"]["id"])
    console = Console(browser, fleet)
    consoles.append(console)
    page = console.page
    page.goto(f"/jobs/{job['job']['id']}?view=grouped")
    note = page.get_by_test_id("grouped-cut").inner_text()
    assert "first 1000 lines" in note and "3 hosts have more" in note
    (only,) = groups_on(page)
    assert only[0] == "web[01:03]"
    assert only[2].splitlines() == [str(n) for n in range(1, 1001)]
