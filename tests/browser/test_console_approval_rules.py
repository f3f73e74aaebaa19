"""Approval rules in a real Chromium, by keyboard: an admin opens Approval rules, sees the
server's `approval_hosts` read-only, adds a rule (a bad pattern is shown on its labelled field,
nothing stored), pauses and resumes it; an operator's ad hoc run on a ruled host waits, and a
second admin approves it on the Approvals page, after which it runs; every change is audited."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.browser.support import add_user
from tests.conftest import AgentFactory, ServerFactory, write

pytestmark = pytest.mark.browser


@pytest.mark.timeout(300)
def test_admin_manages_rules_by_keyboard_and_a_held_run_is_approved(
    tmp_path: Any,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    browser: Any,
    consoles: list[Console],
) -> None:
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nbw1\n[prod]\nbp1\n[legacy]\nbl1\n")
    server = start_server(inventory, "--approval-hosts", "legacy")
    start_agent(server, "bp1")
    admin = Console(browser, server)
    consoles.append(admin)
    page = admin.page

    page.get_by_test_id("nav-admin").get_by_role("link", name="Approval rules").click()
    page.wait_for_url("**/admin/approval-rules")
    fixed = page.locator('tr[data-rule="server"]')
    assert "server setting (read-only)" in fixed.inner_text() and "legacy" in fixed.inner_text()
    assert fixed.get_by_role("button").count() == 0

    form = page.locator("#rule-new")
    pattern = form.get_by_label("Host pattern")
    pattern.focus()
    page.keyboard.type("prod[")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "rule-note"
    page.keyboard.type("two people for production")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    error = page.locator("#rule-error")
    assert "pattern: unbalanced '['" in error.inner_text()
    assert page.get_by_role("alert").count() >= 1
    assert form.get_by_label("Host pattern").get_attribute("aria-invalid") == "true"
    assert [r["id"] for r in server.get("/api/approval-rules")["rules"]] == ["server"]

    pattern = form.get_by_label("Host pattern")
    pattern.fill("")
    pattern.focus()
    page.keyboard.type("prod")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    (rule,) = [r for r in server.get("/api/approval-rules")["rules"] if not r["read_only"]]
    assert rule["pattern"] == "prod" and rule["note"] == "two people for production"
    row = page.locator(f'tr[data-rule="{rule["id"]}"]')
    assert "active" in row.inner_text() and "admin" in row.inner_text()
    screenshot(page, "admin-approval-rules")

    pause = page.get_by_role("button", name=f"Pause rule {rule['id']} (prod)")
    pause.focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "paused" in page.locator(f'tr[data-rule="{rule["id"]}"]').inner_text()
    resume = page.get_by_role("button", name=f"Resume rule {rule['id']} (prod)")
    resume.focus()
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "active" in page.locator(f'tr[data-rule="{rule["id"]}"]').inner_text()
    actions = [
        e["action"]
        for e in server.get("/api/audit")["events"]
        if e["action"].startswith("approval-rule.")
    ]
    assert actions == ["approval-rule.resume", "approval-rule.pause", "approval-rule.create"]

    add_user(server, "opal", "operator", "operator-pass-1")
    operator = Console(browser, server, "opal", "operator-pass-1")
    consoles.append(operator)
    assert operator.page.get_by_test_id("nav-admin").count() == 0
    refused = operator.page.goto("/admin/approval-rules")
    assert refused is not None and refused.status == 403
    assert operator.page.locator("#rule-new").count() == 0
    token = server.post("/api/tokens", {"name": "t", "user": "opal"})["token"]
    held = server.http.post(
        "/api/jobs",
        json={"pattern": "prod", "command": "echo approved-run"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert held.status_code == 202, held.text
    job_id = held.json()["job"]["id"]

    page.goto(f"/jobs/{job_id}")
    waiting = page.get_by_test_id("job-approval").inner_text()
    assert "Held by" in waiting and "prod" in waiting and "echo approved-run" in waiting

    page.get_by_role("link", name="Approvals").first.click()
    page.wait_for_url("**/approvals")
    card = page.locator(f'section.approval[data-job="{job_id}"]')
    assert "echo approved-run" in card.inner_text() and "prod" in card.inner_text()
    card.get_by_label("Comment (required to reject)").fill("looked at it")
    with page.expect_navigation():
        card.get_by_test_id(f"approve-{job_id}").click()
    launched = server.get(f"/api/jobs/{job_id}/approval")["launched_job"]
    ran = server.wait_job(launched)
    assert ran["job"]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(ran["runs"][0]["id"])] == ["approved-run"]
