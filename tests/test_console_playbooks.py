"""The playbooks page and its API: listing, schedules, run now, switches, roles, file names."""

from __future__ import annotations

import html
import re
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import Console, browser, consoles  # noqa: F401 (fixtures)
from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, wait_until

HELLO = """\
    name: hello
    hosts: web
    tasks:
      - name: greet
        command: echo hello from {{ inventory_hostname }}
      - name: after
        needs: greet
        shell: echo done
    """
NIGHTLY = """\
    name: nightly
    hosts: all
    schedule: "0 3 * * *"
    tz: Europe/Berlin
    tasks:
      - name: stamp
        command: echo nightly stamp
    """
BROKEN = """\
    name: broken
    hosts: all
    tasks:
      - name: typo
        comand: echo x
    """


@pytest.fixture
def books(tmp_path: Path) -> Path:
    """A playbooks dir: a plain playbook, a scheduled one, a broken one and files to ignore."""
    folder = tmp_path / "books"
    write(folder / "hello.yml", HELLO)
    write(folder / "nightly.yml", NIGHTLY)
    write(folder / "broken.yml", BROKEN)
    write(folder / "notes.txt", "not a playbook\n")
    write(folder / ".hidden.yml", HELLO.replace("hello", "hidden"))
    write(tmp_path / "outside.yml", HELLO.replace("hello", "outside"))
    return folder


@pytest.fixture
def server(tmp_path: Path, books: Path, start_server: ServerFactory) -> ServerHandle:
    """A server with that playbooks dir and an inventory of web1 (no agent yet)."""
    inventory = write(
        tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n[web:vars]\neasytask_connection=agent\n"
    )
    return start_server(inventory, "--playbooks", str(books))


def signed_in(server: ServerHandle, name: str = "admin", role: str = "admin") -> Browserless:
    """A cookie-keeping client signed in as a new user of that role (or the admin)."""
    password = admin_password(server)
    if name != "admin":
        password = f"{name}-password-1"
        add_user(server, name, role, password)
    client = Browserless(server)
    assert client.login(name, password).status_code == 303
    return client


def next_fire(server: ServerHandle, name: str) -> str:
    """The next fire time the scheduler has stored for a schedule (waits for its first tick)."""

    def stored() -> str | None:
        for row in server.get("/api/schedules")["schedules"]:
            if row["name"] == name and row["next_fire"]:
                return str(row["next_fire"])
        return None

    return str(wait_until(stored, timeout=15, what=f"next fire time of {name}"))


def row_of(page: str, file: str) -> str:
    """The table row of one playbook (and its error row, if any)."""
    match = re.search(
        rf'<tr data-playbook="{re.escape(file)}".*?</tr>(\s*<tr class="playbook-errors".*?</tr>)?',
        page,
        re.S,
    )
    assert match, page
    return match.group(0)


def test_page_lists_playbooks_with_schedules_and_errors(server: ServerHandle) -> None:
    """Each *.yml shows name, hosts, task count, schedule with tz and next fire, or its errors."""
    fire = next_fire(server, "nightly")
    listing = server.get("/api/playbooks")
    assert listing["dir"] == str((server.state_dir.parent / "books").resolve())
    by_file = {p["file"]: p for p in listing["playbooks"]}
    assert list(by_file) == ["broken.yml", "hello.yml", "nightly.yml"]
    assert {k: by_file["hello.yml"][k] for k in ("name", "hosts", "tasks", "schedule")} == {
        "name": "hello",
        "hosts": "web",
        "tasks": 2,
        "schedule": None,
    }
    nightly = by_file["nightly.yml"]["schedule"]
    assert (nightly["cron"], nightly["tz"], nightly["enabled"]) == (
        "0 3 * * *",
        "Europe/Berlin",
        True,
    )
    assert nightly["next_fire"] == fire
    (problem,) = by_file["broken.yml"]["errors"]
    assert problem["line"] == 5 and "comand" in problem["message"]
    assert problem["text"].startswith("broken.yml:5:")

    client = signed_in(server)
    page = client.http.get("/playbooks").text
    client.close()
    hello = row_of(page, "hello.yml")
    assert "<code>web</code>" in hello and '<td class="tasks">2</td>' in hello
    assert 'data-run-url="/api/playbooks/hello.yml/run"' in hello
    row = row_of(page, "nightly.yml")
    assert "<code>0 3 * * *</code> Europe/Berlin" in row
    at = datetime.fromisoformat(fire)
    assert f'<time datetime="{at.isoformat()}">{at:%Y-%m-%d %H:%M:%S}</time>' in row
    assert "03:00 CE" in row  # the same time on the schedule's own clock (CET or CEST)
    assert 'data-run-url="/api/schedules/nightly/run"' in row
    assert 'data-toggle-url="/api/schedules/nightly/disable"' in row
    broken = html.unescape(row_of(page, "broken.yml"))
    assert re.search(r"broken\.yml:5:\d+: unknown key 'comand'", broken), broken
    assert "comand: echo x" in broken  # the offending line under the message
    assert "notes.txt" not in page and ".hidden.yml" not in page and "outside" not in page


def test_run_now_starts_jobs_that_succeed_on_a_real_agent(
    server: ServerHandle, start_agent: AgentFactory
) -> None:
    """Run now starts a file's playbook or a schedule with the session's CSRF token; both succeed."""
    start_agent(server, "web1")
    client = signed_in(server)
    refused = client.api_post("/api/playbooks/hello.yml/run", csrf=False)
    assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
    assert server.get("/api/runs")["runs"] == []

    started = client.api_post("/api/playbooks/hello.yml/run")
    assert started.status_code == 201, started.text
    data = server.wait_job(started.json()["job"]["id"])
    job = data["job"]
    assert (job["kind"], job["name"], job["command"], job["submitted_by"]) == (
        "playbook",
        "hello",
        "hello.yml",
        "admin",
    )
    assert job["state"] == "success"
    assert {(r["task"], r["state"]) for r in data["runs"]} == {
        ("greet", "success"),
        ("after", "success"),
    }
    (event,) = server.get("/api/audit", action="job.submit")["events"]
    assert (event["actor"], event["detail"]["file"], event["detail"]["hosts"]) == (
        "admin",
        "hello.yml",
        ["web1"],
    )
    greet = next(r for r in data["runs"] if r["task"] == "greet")
    assert [ln["text"] for ln in server.log_lines(greet["id"]) if ln["stream"] == "stdout"] == [
        "hello from web1"
    ]

    scheduled = client.api_post("/api/schedules/nightly/run")
    assert scheduled.status_code == 201, scheduled.text
    data = server.wait_job(scheduled.json()["job"])
    assert (data["job"]["kind"], data["job"]["state"]) == ("schedule", "success")
    assert client.http.get(f"/jobs/{data['job']['id']}").status_code == 200

    broken = client.api_post("/api/playbooks/broken.yml/run")
    assert broken.status_code == 400 and "broken.yml:5:" in broken.json()["error"]
    client.close()


def test_schedule_switches_show_on_the_page(server: ServerHandle) -> None:
    """Disable takes a schedule's next fire time off the page; enable brings it back."""
    next_fire(server, "nightly")
    client = signed_in(server, "otto", "operator")
    off = client.api_post("/api/schedules/nightly/disable")
    assert off.status_code == 200 and off.json()["enabled"] is False
    row = row_of(client.http.get("/playbooks").text, "nightly.yml")
    assert ">disabled<" in row and "<time" not in row
    assert 'data-toggle-url="/api/schedules/nightly/enable">Enable<' in row
    assert client.api_post("/api/schedules/nightly/enable").status_code == 200
    row = row_of(client.http.get("/playbooks").text, "nightly.yml")
    assert ">enabled<" in row and "<time datetime=" in row
    assert 'data-toggle-url="/api/schedules/nightly/disable">Disable<' in row
    client.close()


def test_a_viewer_sees_the_list_but_may_not_run_or_switch(server: ServerHandle) -> None:
    """A viewer gets the page without buttons, and 403 from every run and switch endpoint."""
    client = signed_in(server, "vera", "viewer")
    page = client.http.get("/playbooks")
    assert page.status_code == 200 and 'data-playbook="hello.yml"' in page.text
    assert "data-run-url" not in page.text and "data-toggle-url" not in page.text
    for path in (
        "/api/playbooks/hello.yml/run",
        "/api/schedules/nightly/run",
        "/api/schedules/nightly/disable",
        "/api/schedules/nightly/enable",
    ):
        resp = client.api_post(path)
        assert resp.status_code == 403, (path, resp.text)
    assert client.http.get("/api/playbooks").status_code == 200
    client.close()
    assert server.get("/api/runs")["runs"] == []


REFUSED = [
    ("%2E%2E", 400),  # the name ".."
    (".hidden.yml", 400),
    ("..%5Coutside.yml", 400),  # a backslash
    ("%00.yml", 400),
    ("..%2Foutside.yml", 404),  # a slash never matches the route
    ("%2Fetc%2Fpasswd", 404),
    ("outside.yml", 404),  # exists, but next to the directory, not in it
    ("notes.txt", 404),
    ("missing.yml", 404),
]


def test_file_names_outside_the_directory_are_refused(server: ServerHandle) -> None:
    """Only a plain name of a playbook in the directory runs; traversal is refused, nothing runs."""
    for name, status in REFUSED:
        resp = httpx.post(
            f"{server.url}/api/playbooks/{name}/run",
            headers={"authorization": f"Bearer {server.token}"},
            timeout=30,
        )
        assert resp.status_code == status, (name, resp.text)
        if status == 400:
            error = resp.json()["error"]
            # a NUL is refused for the whole URL before the name is read
            expected = "a NUL character" if "%00" in name else "not a playbook file name"
            assert expected in error, (name, error)
    assert server.get("/api/runs")["runs"] == []


def test_without_a_playbooks_directory_the_page_says_so(start_server: ServerFactory) -> None:
    """A server whose playbooks dir does not exist lists nothing and says where it looked."""
    server = start_server()
    assert server.get("/api/playbooks")["playbooks"] == []
    client = signed_in(server)
    page = client.http.get("/playbooks").text
    client.close()
    assert 'data-testid="playbooks-empty"' in page and "no-playbooks" in page


@pytest.mark.browser
@pytest.mark.timeout(180)
def test_run_now_in_the_browser_opens_the_job(
    server: ServerHandle,
    start_agent: AgentFactory,
    browser: Any,  # noqa: F811
    consoles: list[Console],  # noqa: F811
) -> None:
    """Run now asks for a second click, then the browser lands on the job, which succeeds."""
    start_agent(server, "web1")
    console = Console(browser, server)
    consoles.append(console)
    page = console.page
    page.click("nav >> text=Playbooks")
    page.wait_for_url(re.compile(r"/playbooks$"))  # loaded: the page's script is listening
    button = page.locator("tr[data-playbook='hello.yml'] button[data-run-url]")
    button.click()
    assert button.inner_text() == "Confirm: run now"
    assert server.get("/api/runs")["runs"] == []
    button.click()
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(page.url.rsplit("/", 1)[1])
    page.get_by_test_id("job-state").filter(has_text="success").wait_for()
    assert server.get(f"/api/jobs/{job_id}")["job"]["name"] == "hello"
    # the schedule switch reloads the page with the new state
    page.goto("/playbooks")
    page.locator("tr[data-playbook='nightly.yml'] button[data-toggle-url]").click()
    page.locator("tr[data-playbook='nightly.yml'] [data-testid=schedule-state]").filter(
        has_text="disabled"
    ).wait_for()
