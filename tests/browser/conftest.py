"""A real Chromium (Debian's, driven by Playwright) for the console tests."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import admin_password
from tests.support import ServerHandle

CHROMIUM = os.environ.get("EASYTASK_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, headless; each launch gets a fresh temporary profile (user data dir)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    try:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()
    finally:
        playwright.stop()


class Console:
    """One signed-in browser context on a server, collecting the page errors it sees."""

    def __init__(
        self, browser: Any, server: ServerHandle, name: str = "admin", password: str | None = None
    ) -> None:
        self.context = browser.new_context(
            base_url=server.url, viewport={"width": 1280, "height": 860}
        )
        self.context.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        page = self.page
        page.goto("/")
        page.wait_for_url(re.compile(r"/login\?next="))
        page.fill("input[name=username]", name)
        page.fill("input[name=password]", password or admin_password(server))
        page.click("form button[type=submit]")
        page.get_by_test_id("user").wait_for()
        assert page.get_by_test_id("user").inner_text() == name

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def consoles(browser: Any) -> Iterator[list[Console]]:
    """Browser contexts a test opens; closed at teardown, with no page error allowed."""
    opened: list[Console] = []
    yield opened
    errors = [e for c in opened for e in c.errors]
    for console in opened:
        console.close()
    assert not errors, errors


def screenshot(page: Any, name: str) -> None:
    """Save a screenshot to $EASYTASK_SCREENSHOTS (e.g. docs/img) when it is set."""
    target = os.environ.get("EASYTASK_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(target) / f"{name}.png"))
