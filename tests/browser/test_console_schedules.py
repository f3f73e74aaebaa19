"""Schedules in a real Chromium: an admin makes one in the console's form (a bad cron and an
unknown time zone shown by their fields, the values kept), sees its next fire times in the list
and on its page, pauses it and runs it now; a schedule read from a file is shown read-only."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write

pytestmark = pytest.mark.browser

TEMPLATE = {
    "name": "say-env",
    "command": "echo console schedule {{ params.env | quote }}",
    "pattern": "web",
    "params": [{"name": "env", "type": "choice", "choices": ["staging", "prod"], "required": True}],
}


@pytest.mark.timeout(300)
def test_schedule_made_in_the_console_paused_and_run_now(
    tmp_path: Any,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    browser: Any,
    consoles: list[Console],
) -> None:
    inventory = write(tmp_path / "inv.ini", "[web]\nweb1\n")
    books = tmp_path / "books"
    write(
        books / "hourly.yml",
        """\
        name: hourly-file
        hosts: web
        schedule: "@hourly"
        tasks:
          - name: t
            command: "true"
        """,
    )
    server = start_server(inventory, "--playbooks", str(books))
    start_agent(server, "web1")
    assert server.http.post("/api/templates", json=TEMPLATE).status_code == 201

    admin = Console(browser, server)
    consoles.append(admin)
    page = admin.page
    page.click("nav >> text=Schedules")
    page.wait_for_url(re.compile(r"/schedules$"))
    assert page.locator("tr[data-schedule=hourly-file]").inner_text().count("from a file") == 1

    page.fill("#sched-name", "nightly")
    page.fill("#sched-cron", "30 2 * * 77")
    page.fill("#sched-tz", "Europe/Berlin")
    page.select_option("#sched-kind", "template")
    page.fill("#sched-template", "say-env")
    page.fill("#sched-params", "env: prod")
    page.click("#schedule-save")
    error = page.get_by_test_id("error-cron")
    error.wait_for()
    assert "day-of-week" in error.inner_text()
    assert page.locator("#sched-cron").get_attribute("aria-invalid") == "true"
    assert page.locator("#sched-params").input_value() == "env: prod"  # kept as given
    assert server.http.get("/api/schedules/nightly").status_code == 404

    page.fill("#sched-cron", "30 2 * * *")
    page.fill("#sched-tz", "Europe/Nowhere")
    page.click("#schedule-save")
    page.get_by_test_id("error-tz").wait_for()
    assert "unknown time zone" in page.get_by_test_id("error-tz").inner_text()
    screenshot(page, "schedule-form")

    page.fill("#sched-tz", "Europe/Berlin")
    page.click("#schedule-save")
    page.wait_for_url(re.compile(r"/schedules/nightly$"))
    fires = page.get_by_test_id("schedule-fires").inner_text().splitlines()
    assert len(fires) == 3 and all(re.search(r" 02:30 CES?T$", f) for f in fires), fires
    assert "template say-env (env=prod)" in page.locator(".details").inner_text()

    page.click("nav >> text=Schedules")
    listed = page.get_by_test_id("fires-nightly").inner_text().splitlines()
    assert listed == fires
    screenshot(page, "schedules")
    page.locator("tr[data-schedule=nightly] a >> text=nightly").click()
    page.wait_for_url(re.compile(r"/schedules/nightly$"))
    page.click("#schedule-toggle")
    page.wait_for_url(re.compile(r"/schedules/nightly$"))
    assert page.get_by_test_id("schedule-state").inner_text() == "paused"
    assert server.get("/api/schedules/nightly")["enabled"] is False

    page.click("#schedule-run")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    data = server.wait_job(job_id)
    assert data["job"]["source"] == "schedule nightly" and data["job"]["state"] == "success"
    lines = [ln["text"] for ln in server.log_lines(data["runs"][0]["id"])]
    assert lines == ["console schedule prod"]
    events = {e["action"] for e in server.get("/api/audit")["events"]}
    assert {"schedule.create", "schedule.disable", "schedule.run"} <= events
