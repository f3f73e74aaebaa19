"""A playbook job reads as a playbook in a real Chromium: tasks x hosts with each cell's state,
attempts and duration linking to its run, the run page naming its task, and the navigation
highlighting the section a page belongs to."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle

pytestmark = pytest.mark.browser

BOOK = """\
name: release
hosts: all
tasks:
  - name: fetch
    command: echo fetched
  - name: migrate
    hosts: db
    command: echo migrated
    needs: [fetch]
  - name: flaky
    shell: test -e {marks}/{{{{ inventory_hostname }}}} || {{ touch {marks}/{{{{ inventory_hostname }}}}; exit 1; }}
    retries: 1
    retry_delay: 0s
    needs: [fetch]
  - name: report
    command: echo done
"""


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1 and db1."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n\n[db]\ndb1\n")
    server = start_server(inventory)
    for name in ("web1", "db1"):
        start_agent(server, name)
    return server


def current(page: Any) -> list[str]:
    """The navigation links marked as the current section."""
    return [a.inner_text() for a in page.locator("header nav a[aria-current=page]").all()]


def test_playbook_job_page_is_a_tasks_by_hosts_matrix(
    fleet: ServerHandle, browser: Any, consoles: list, tmp_path: Path
) -> None:
    """Tasks come in playbook order with their needs, hosts across; each cell shows its run's
    state, attempts (a retried run: ×2) and duration and links to the run, whose page names
    its task; a task that does not run on a host leaves its cell empty; the navigation marks
    Playbooks for a playbook's job and run, Ad hoc for an ad hoc job's."""
    marks = tmp_path / "marks"
    marks.mkdir()
    text = BOOK.format(marks=marks)
    job = fleet.post("/api/playbooks/run", {"name": "release.yml", "text": text})["job"]
    done = fleet.wait_job(job["id"])
    assert done["job"]["state"] == "success", done
    runs = {(r["task"], r["host"], r["attempt"]): r["id"] for r in done["runs"]}
    adhoc = fleet.wait_job(fleet.submit("web1", "echo plain")["job"]["id"])

    console = Console(browser, fleet)
    consoles.append(console)
    page = console.page
    page.goto(f"/jobs/{job['id']}")
    matrix = page.get_by_test_id("matrix")
    assert matrix.get_by_test_id("matrix-host").all_inner_texts() == ["web1", "db1"]
    assert matrix.get_by_test_id("task-name").all_inner_texts() == [
        "fetch",
        "migrate",
        "flaky",
        "report",
    ]
    needs = [
        row.get_by_test_id("task-needs").inner_text()
        if row.get_by_test_id("task-needs").count()
        else ""
        for row in matrix.get_by_test_id("matrix-task").all()
    ]
    assert needs == ["", "needs fetch", "needs fetch", "needs flaky (the task above)"]
    rows = matrix.get_by_test_id("matrix-task")
    migrate = rows.nth(1).locator("td.cell")
    assert migrate.nth(0).get_by_test_id("cell").count() == 0  # migrate runs on db alone
    assert migrate.nth(0).inner_text().strip() == "—"
    cell = migrate.nth(1).get_by_test_id("cell")
    assert cell.locator(".st").inner_text() == "success"
    assert re.fullmatch(r"\d+\.\d+s|\d+m \d\ds", cell.locator(".dur").inner_text())
    assert cell.get_attribute("href") == f"/runs/{runs[('migrate', 'db1', 1)]}"
    flaky = rows.nth(2).locator("td.cell").nth(0).get_by_test_id("cell")
    assert flaky.get_by_test_id("cell-attempts").inner_text() == "×2"
    assert flaky.get_attribute("href") == f"/runs/{runs[('flaky', 'web1', 2)]}"
    assert rows.nth(0).get_by_test_id("cell-attempts").first.inner_text() == ""
    assert current(page) == ["Playbooks"]
    assert page.get_by_role("link", name="Run again…").get_attribute("href") == "/playbooks"
    screenshot(page, "job-matrix")

    flaky.click()
    page.wait_for_url(re.compile(rf"/runs/{runs[('flaky', 'web1', 2)]}$"))
    assert page.get_by_test_id("run-task").inner_text() == "flaky"
    assert page.get_by_test_id("task").inner_text() == "flaky"
    assert current(page) == ["Playbooks"]

    page.goto(f"/jobs/{adhoc['job']['id']}")
    assert page.get_by_test_id("matrix").count() == 0
    assert current(page) == ["Ad hoc"]
    page.goto(f"/runs/{adhoc['runs'][0]['id']}")
    assert page.get_by_test_id("run-task").count() == 0
    assert current(page) == ["Ad hoc"]
    page.goto("/runs")
    assert current(page) == ["Runs"]


def test_matrix_follows_a_running_playbook_live(
    fleet: ServerHandle, browser: Any, consoles: list, tmp_path: Path
) -> None:
    """Opened while the playbook runs, the matrix's cells change state as the runs do, a retry
    moves its cell to the new attempt (×2, linking to it), and the job ends on the page
    without a reload."""
    marks = tmp_path / "marks"
    marks.mkdir()
    gate = tmp_path / "gate"
    text = BOOK.format(marks=marks).replace(
        "command: echo fetched", f"shell: while [ ! -e {gate} ]; do sleep 0.05; done"
    )
    job = fleet.post("/api/playbooks/run", {"name": "release.yml", "text": text})["job"]
    console = Console(browser, fleet)
    consoles.append(console)
    page = console.page
    page.goto(f"/jobs/{job['id']}")
    rows = page.get_by_test_id("matrix-task")
    report = rows.nth(3).locator("td.cell").nth(1).get_by_test_id("cell")
    assert report.locator(".st").inner_text() == "queued"
    gate.touch()
    page.get_by_test_id("job-state").get_by_text("success").wait_for()
    assert report.locator(".st").inner_text() == "success"
    done = fleet.wait_job(job["id"])
    second = next(
        r["id"] for r in done["runs"] if (r["task"], r["host"], r["attempt"]) == ("flaky", "db1", 2)
    )
    flaky = rows.nth(2).locator("td.cell").nth(1).get_by_test_id("cell")
    flaky.locator(".st").get_by_text("success").wait_for()
    assert flaky.get_by_test_id("cell-attempts").inner_text() == "×2"
    assert flaky.get_attribute("href") == f"/runs/{second}"
