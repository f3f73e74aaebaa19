"""A schedule made in the console's form on one server fires once with two servers on one
PostgreSQL, both ticking; the other server's console lists it and links the job it started."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console
from tests.browser.support import admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import PostgresCluster, db_execute, wait_until
from tests.test_stored_schedules import _due_now

pytestmark = [pytest.mark.browser, pytest.mark.postgres]


@pytest.mark.timeout(300)
def test_a_schedule_made_in_the_console_fires_once_with_two_servers(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
    browser: Any,
    consoles: list[Console],
) -> None:
    url = postgres.new_database()
    inventory = write(tmp_path / "inv.ini", "[web]\ntwo1\n")
    first = start_server(inventory, "--db", url, state_dir=tmp_path / "a")
    start_agent(first, "two1", wait=False)  # comes online while the second server starts
    second_state = tmp_path / "b"
    second_state.mkdir()
    for name in ("client_key", "client_key.pub"):  # servers sharing a database share it
        shutil.copy(first.state_dir / name, second_state / name)
    second = start_server(inventory, "--db", url, state_dir=second_state)

    on_first = Console(browser, first)
    consoles.append(on_first)
    page = on_first.page
    page.goto("/schedules")
    page.fill("#sched-name", "console-once")
    page.fill("#sched-cron", "0 0 1 1 *")  # new year: the test makes its fire time come
    page.fill("#sched-tz", "UTC")
    page.select_option("#sched-kind", "adhoc")
    page.fill("#sched-command", "echo fired once")
    page.fill("#sched-pattern", "web")
    page.click("#schedule-save")
    page.wait_for_url(re.compile(r"/schedules/console-once$"))
    assert page.get_by_test_id("schedule-state").inner_text() == "enabled"

    # the second server's console lists it (the same stored schedule)
    on_second = Console(browser, second, password=admin_password(first))
    consoles.append(on_second)
    other = on_second.page
    other.goto("/schedules")
    assert other.locator("tr[data-schedule=console-once]").get_attribute("data-origin") == "db"

    wait_until(lambda: first.agent_status("two1") == "online", timeout=60, what="the agent")
    job_id = _due_now(first, "console-once")
    assert first.wait_job(job_id)["job"]["state"] == "success"
    # one fire record and one job for the fire time, whichever server claimed it; both
    # servers moved on to the next one (next year), so neither fires it again
    fires = db_execute(url, "SELECT job_id FROM schedule_fire")
    assert [f[0] for f in fires] == [job_id]
    jobs = db_execute(url, "SELECT id FROM job WHERE source = 'schedule console-once'")
    assert [j[0] for j in jobs] == [job_id]
    year = datetime.now(UTC).year + 1
    for server in (first, second):
        nxt = server.get("/api/schedules/console-once")["next_fire"]
        assert datetime.fromisoformat(nxt).year == year

    # the second server's console shows the fire and its job, with the run's output
    other.goto("/schedules/console-once")
    other.get_by_role("link", name=f"job #{job_id}").click()
    other.wait_for_url(re.compile(rf"/jobs/{job_id}$"))
    assert "schedule console-once" in other.content()
    lines = [ln["text"] for ln in second.log_lines(first.wait_job(job_id)["runs"][0]["id"])]
    assert lines == ["fired once"]
