"""The admin pages in a real Chromium: Users -> add a user (one-time password) -> create a token
and revoke it -> the audit log, filtered, shows those events with the chain verified."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import ServerFactory, write

pytestmark = pytest.mark.browser


@pytest.mark.timeout(300)
def test_admin_walks_users_tokens_and_the_audit_log(
    tmp_path: Any, start_server: ServerFactory, browser: Any, consoles: list[Console]
) -> None:
    inventory = write(
        tmp_path / "inv" / "hosts.ini",
        "[web]\nweb1 easytask_connection=ssh ansible_host=127.0.0.1 ansible_port=1 tier=edge\n"
        "web2 easytask_connection=ssh ansible_host=127.0.0.1 ansible_port=1\n"
        "[web:vars]\ntier=front\ndeploy_token=t0ps3cret\n[all:vars]\nregion=eu\n",
    )
    server = start_server(inventory)
    admin = Console(browser, server)
    consoles.append(admin)
    page = admin.page

    page.get_by_test_id("nav-admin").get_by_role("link", name="Users").click()
    page.wait_for_url("**/admin/users")
    add = page.locator("#user-new")
    add.get_by_label("Name", exact=True).fill("dave")
    add.get_by_label("Role", exact=True).select_option("operator")
    add.get_by_label("Scope").fill("web*")
    page.click("#user-create")
    password = page.locator("#one-time-password").inner_text()
    assert len(password) >= 12
    row = page.locator('tr[data-user="dave"]')
    assert row.locator("select[name=role]").input_value() == "operator"
    assert row.locator("input[name=scope]").input_value() == "web*"
    screenshot(page, "admin-users")

    page.get_by_test_id("nav-admin").get_by_role("link", name="Tokens").click()
    page.wait_for_url("**/admin/tokens")
    new = page.locator("#token-new")
    new.get_by_label("Owner").select_option("dave")
    new.get_by_label("Name", exact=True).fill("deploy-bot")
    new.get_by_label("Expires after").fill("7d")
    page.click("#token-create")
    secret = page.locator("#token-secret").inner_text()
    (token,) = [t for t in server.get("/api/tokens")["tokens"] if t["name"] == "deploy-bot"]
    assert token["user"] == "dave" and token["expires_at"] and not token["revoked"]
    assert secret and secret not in str(server.get("/api/tokens"))
    screenshot(page, "admin-tokens")
    page.get_by_role("button", name=f"Revoke token {token['id']} (deploy-bot)").click()
    page.wait_for_url("**/admin/tokens")
    assert page.locator(f'tr[data-token="{token["id"]}"]').inner_text().count("revoked") == 1
    assert page.locator("#token-secret").count() == 0

    page.get_by_test_id("nav-admin").get_by_role("link", name="Audit").click()
    page.wait_for_url("**/audit")
    assert "Chain intact" in page.get_by_test_id("audit-verify").inner_text()
    form = page.locator("#audit-filters")
    form.get_by_label("Actor").fill("admin")
    form.get_by_label("Text").fill("dave")
    form.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/audit?*")
    actions = page.locator("#audit-events tbody tr").evaluate_all(
        "rows => rows.map(r => r.dataset.action)"
    )
    assert actions == ["token.revoke", "token.create", "user.create"], actions
    screenshot(page, "audit")
    assert password not in page.content() and secret not in page.content()
    page.get_by_role("button", name="Verify the whole chain now").click()
    page.wait_for_url("**/audit")
    box = page.get_by_test_id("audit-verify")
    assert box.get_attribute("data-verify") == "ok"
    assert "Chain intact" in box.inner_text() and "whole chain was last walked at 20" in (
        box.inner_text()
    )

    page.get_by_test_id("nav-admin").get_by_role("link", name="Inventory").click()
    page.wait_for_url("**/admin/inventory")
    page.locator('tr[data-host="web1"]').get_by_role("link", name="web1").click()
    page.wait_for_url("**/admin/inventory?host=web1")
    detail = page.get_by_test_id("inventory-detail")
    assert detail.locator('tr[data-var="tier"] .inventory-origin').inner_text() == "host"
    assert detail.locator('tr[data-var="region"] .inventory-origin').inner_text() == "group all"
    token = detail.locator('tr[data-var="deploy_token"]')
    assert "****" in token.inner_text() and "group web" in token.inner_text()
    assert "t0ps3cret" not in page.content()
    screenshot(page, "admin-inventory")
