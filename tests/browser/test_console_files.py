"""The console's ad hoc file actions in a real Chromium: script upload, copy, checksum."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import REPO, ServerHandle

pytestmark = pytest.mark.browser

DEMO_AGENTS = ("web1", "web2", "db1")


@pytest.fixture
def demo_fleet(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """The sample inventory with its three agents, like `make demo`, and a 64 KiB upload limit."""
    server = start_server(REPO / "inventory", "--upload-limit", "64k")
    for name in DEMO_AGENTS:
        start_agent(server, name)
    return server


def grid_states(page: Any) -> dict[str, str]:
    """Host -> state of the job page's status grid."""
    return {
        row.get_attribute("data-host"): row.locator(".st").inner_text().strip()
        for row in page.locator("#status-grid tbody tr").all()
    }


def wait_grid(page: Any, state: str = "success") -> None:
    """Until every agent's row in the status grid shows `state`."""
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    for host in DEMO_AGENTS:
        page.locator(f"#status-grid tr[data-host={host}] .st").filter(has_text=state).wait_for()


def stdout_of(server: ServerHandle, page: Any) -> dict[str, list[str]]:
    """Host -> stdout lines of the job on screen."""
    job = server.get(f"/api/jobs/{int(page.url.rsplit('/', 1)[1])}")
    return {
        run["host"]: [ln["text"] for ln in server.log_lines(run["id"]) if ln["stream"] == "stdout"]
        for run in job["runs"]
    }


@pytest.mark.timeout(300)
def test_script_copy_and_checksum_from_the_console(
    demo_fleet: ServerHandle, browser: Any, consoles: list[Console], tmp_path: Path
) -> None:
    """A script upload, a copy and a checksum each end in a per-host grid; big files are refused."""
    console = Console(browser, demo_fleet)
    consoles.append(console)
    page = console.page
    script = write(
        tmp_path / "hello.sh",
        """\
        #!/bin/sh
        echo "args: $1|$2"
        """,
    )
    page.goto("/adhoc")
    page.fill("#pattern", "all")
    page.check("input[name=kind][value=script]")
    assert page.locator("#command").is_hidden()
    page.set_input_files("#script-file", str(script))
    page.fill("#script-args", "one 'two words'")
    screenshot(page, "adhoc-script")
    page.click("#adhoc-run")
    wait_grid(page)
    assert grid_states(page) == {h: "success" for h in DEMO_AGENTS}
    assert stdout_of(demo_fleet, page) == {h: ["args: one|two words"] for h in DEMO_AGENTS}

    # copy: one file to every host, with a mode; the grid says what changed
    conf = write(tmp_path / "app.conf", "answer = 42\n")
    digest = hashlib.sha256(conf.read_bytes()).hexdigest()
    dest = tmp_path / "copied" / "app.conf"
    page.goto("/adhoc")
    page.fill("#pattern", "all")
    page.check("input[name=kind][value=copy]")
    page.set_input_files("#copy-file", str(conf))
    page.fill("#copy-dest", str(dest))
    page.fill("#copy-mode", "0640")
    page.click("#adhoc-run")
    wait_grid(page)
    reasons = page.locator("#status-grid tbody tr .reason").all_inner_texts()
    assert len(reasons) == 3 and set(reasons) <= {"changed", "unchanged"}
    assert dest.read_text() == "answer = 42\n"
    assert dest.stat().st_mode & 0o777 == 0o640

    # checksum with the expected digest: every host agrees and prints it
    page.goto("/adhoc")
    page.fill("#pattern", "all")
    page.check("input[name=kind][value=checksum]")
    page.fill("#checksum-path", str(dest))
    page.fill("#checksum-expect", digest)
    page.click("#adhoc-run")
    wait_grid(page)
    assert stdout_of(demo_fleet, page) == {h: [digest] for h in DEMO_AGENTS}
    # a wrong expectation fails on every host
    page.goto("/adhoc")
    page.fill("#pattern", "web1")
    page.check("input[name=kind][value=checksum]")
    page.fill("#checksum-path", str(dest))
    page.fill("#checksum-expect", "0" * 64)
    page.click("#adhoc-run")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    page.locator("#status-grid tr[data-host=web1] .st").filter(has_text="failed").wait_for()

    # past the server's upload limit: a clear error, nothing submitted
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * (100 << 10))
    jobs_before = len(demo_fleet.get("/api/runs", limit=1000)["runs"])
    page.goto("/adhoc")
    page.fill("#pattern", "all")
    page.check("input[name=kind][value=copy]")
    page.set_input_files("#copy-file", str(big))
    page.fill("#copy-dest", str(tmp_path / "never.bin"))
    page.click("#adhoc-run")
    error = page.locator("#adhoc-error")
    error.filter(has_text="upload too large").wait_for()
    assert error.inner_text() == (
        "upload too large: 100.0 KiB is more than the server's limit of 64.0 KiB "
        "(easytask server --upload-limit)"
    )
    assert page.url.endswith("/adhoc")
    assert len(demo_fleet.get("/api/runs", limit=1000)["runs"]) == jobs_before

    # the audit log names each uploaded file with its SHA-256, as for the CLI
    uploads = demo_fleet.get("/api/audit", action="file.upload")["events"]
    assert {(e["detail"]["name"], e["detail"]["sha256"]) for e in uploads} == {
        ("hello.sh", hashlib.sha256(script.read_bytes()).hexdigest()),
        ("app.conf", digest),
    }
    submits = demo_fleet.get("/api/audit", action="job.submit")["events"]
    assert {"app.conf": digest} in [e["detail"].get("files") for e in submits]
    assert all(e["source"].startswith("console ") for e in uploads + submits)
