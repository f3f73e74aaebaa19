"""Job templates and approvals in a real Chromium: an admin makes a template with a choice
parameter and approval; an operator launches it from its form (a bad value shown by its field);
a second user approves it; the run streams."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import wait_until

pytestmark = pytest.mark.browser

DEFINITION = """\
name: deploy
description: deploy to one environment
command: >-
  for i in 1 2 3 4 5 6 7 8; do echo "deploying {{ params.env | quote }} step $i of
  {{ params.steps | quote }}"; sleep 0.4; done
pattern: web
params:
  - {name: env, label: Environment, type: choice, choices: [staging, prod], required: true}
  - {name: steps, label: Steps, type: number, min: 1, max: 3, default: 2}
launch: {roles: [operator]}
approval: required
approvers: {users: [carol]}
"""


@pytest.mark.timeout(300)
def test_template_launched_from_its_form_waits_for_a_second_user(
    tmp_path: Any,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    browser: Any,
    consoles: list[Console],
) -> None:
    inventory = write(tmp_path / "inv.ini", "[web]\nweb1\n")
    server = start_server(inventory)
    start_agent(server, "web1")
    for name, role in (("opal", "operator"), ("carol", "viewer")):
        server.post("/api/users", {"name": name, "role": role, "password": "long-enough-1"})

    admin = Console(browser, server)
    consoles.append(admin)
    page = admin.page
    page.click("nav >> text=Templates")
    page.fill("#definition", DEFINITION)
    page.click("#template-create")
    page.wait_for_url(re.compile(r"/templates/deploy$"))
    assert "required" in page.get_by_test_id("template-approval").inner_text()

    operator = Console(browser, server, "opal", "long-enough-1")
    consoles.append(operator)
    op = operator.page
    op.click("nav >> text=Templates")
    op.click("#templates a >> text=deploy")
    assert op.locator("label[for=param-env]").inner_text().startswith("Environment")
    assert op.locator("#param-steps").input_value() == "2"
    op.select_option("#param-env", "prod")
    op.fill("#param-steps", "9")
    op.click("#launch")
    error = op.get_by_test_id("error-steps")
    error.wait_for()
    assert "must be at most 3" in error.inner_text()
    assert op.locator("#param-steps").get_attribute("aria-invalid") == "true"
    assert op.locator("#param-env").input_value() == "prod"  # kept as given
    screenshot(op, "template-launch")
    op.fill("#param-steps", "3")
    op.click("#launch")
    op.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(op.url.rsplit("/", 1)[1])
    waiting = op.get_by_test_id("job-approval")
    assert "awaiting approval" in waiting.inner_text()
    assert server.get(f"/api/jobs/{job_id}")["runs"] == []

    op.click("nav >> text=Dashboard")
    assert op.get_by_test_id("awaiting-approval").inner_text().startswith("1")
    op.locator(f"[data-testid=awaiting-jobs] a[href='/jobs/{job_id}']").wait_for()
    op.click("nav >> text=Approvals")
    assert "Your own launch" in op.locator(f".approval[data-job='{job_id}']").inner_text()
    assert op.get_by_test_id(f"approve-{job_id}").count() == 0

    approver = Console(browser, server, "carol", "long-enough-1")
    consoles.append(approver)
    ap = approver.page
    ap.click("nav >> text=Approvals")
    card = ap.locator(f".approval[data-job='{job_id}']")
    assert "env=prod" in card.inner_text() and "opal" in card.inner_text()
    screenshot(ap, "approvals")
    ap.fill(f"#comment-{job_id}", "ship it")
    ap.get_by_test_id(f"approve-{job_id}").click()
    ap.wait_for_url(re.compile(r"/jobs/\d+$"))
    launched = int(ap.url.rsplit("/", 1)[1])
    assert launched != job_id
    assert ap.get_by_test_id("approved-by").inner_text() == "carol"

    # the run streams: its lines arrive while it runs
    ap.click("#status-grid tr[data-host=web1] a.output")
    ap.wait_for_url(re.compile(r"/runs/\d+$"))
    shown = "els => els.filter(e => !e.hidden && e.dataset.seq).map(e => e.textContent)"
    first = wait_until(
        lambda: ap.eval_on_selector_all("#logview .logline", shown), what="first lines"
    )
    assert "deploying prod step 1 of 3" in first[0]
    wait_until(
        lambda: len(ap.eval_on_selector_all("#logview .logline", shown)) == 8,
        timeout=60,
        what="every line",
    )
    ap.get_by_test_id("run-state").filter(has_text="success").wait_for()

    op.goto(f"/jobs/{job_id}")
    status = op.get_by_test_id("job-approval").inner_text()
    assert "approved" in status and "carol" in status and "ship it" in status
    assert op.get_by_test_id("launched-job").inner_text() == f"job #{launched}"
