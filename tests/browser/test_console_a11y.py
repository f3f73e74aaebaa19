"""Every console page in a real Chromium, checked through its DOM: each control and link has an
accessible name, images and charts a text alternative, tables their header cells with a scope,
one h1 and one main landmark, the navigation marks the page's section, a skip link leads Tab
to the content in page order, and the page does not scroll sideways at 1280 px nor at a phone's
390 px (the navigation wraps, tables scroll inside themselves, forms stack)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, wait_until

pytestmark = pytest.mark.browser

BOOK = """\
name: release
hosts: all
tasks:
  - name: fetch
    command: echo fetched
  - name: report
    command: echo done
"""

TEMPLATE = {
    "name": "greet",
    "kind": "command",
    "description": "say hello to one environment",
    "command": "echo hello {{ params.env | quote }}",
    "pattern": "web",
    "params": [
        {"name": "env", "type": "choice", "choices": ["staging", "prod"], "required": True},
        {"name": "loud", "type": "boolean"},
        {"name": "count", "type": "number", "min": 1, "max": 3, "default": 1},
    ],
    "approval": "required",
}

# What the page's DOM says about its accessibility; every list should come back empty.
AUDIT = """() => {
  const text = (el) => (el ? (el.innerText || el.textContent || "").trim() : "");
  const byIds = (ids) => ids.split(/\\s+/).map((id) => text(document.getElementById(id))).join(" ").trim();
  const describe = (el) => el.outerHTML.slice(0, 160);
  function name(el) {
    if ((el.getAttribute("aria-label") || "").trim()) return el.getAttribute("aria-label").trim();
    if (el.getAttribute("aria-labelledby")) return byIds(el.getAttribute("aria-labelledby"));
    if (el.labels && el.labels.length) {
      const t = Array.from(el.labels).map(text).join(" ").trim();
      if (t) return t;
    }
    if (el.tagName === "BUTTON" || el.tagName === "A") {
      const t = text(el) || Array.from(el.querySelectorAll("img[alt]")).map((i) => i.alt).join(" ");
      if (t.trim()) return t.trim();
    }
    if (el.tagName === "INPUT" && ["submit", "button", "reset"].includes(el.type)) return el.value;
    return (el.getAttribute("title") || "").trim();
  }
  const unnamed = Array.from(
    document.querySelectorAll("input:not([type=hidden]), select, textarea, button, a[href]")
  ).filter((el) => !name(el)).map(describe);
  const pictures = Array.from(document.querySelectorAll("img, canvas, svg")).filter((el) => {
    if (el.closest("[aria-hidden=true]")) return false;
    if (el.tagName === "IMG") return !el.hasAttribute("alt");
    return !(el.getAttribute("aria-label") || el.getAttribute("aria-labelledby"));
  }).map(describe);
  const headless = Array.from(document.querySelectorAll("table")).filter(
    (t) => !t.querySelector("th")
  ).map(describe);
  const unscoped = Array.from(document.querySelectorAll("th")).filter(
    (th) => !["col", "row", "colgroup", "rowgroup"].includes(th.getAttribute("scope"))
  ).map(describe);
  const navs = Array.from(document.querySelectorAll("nav[aria-label='Main']"));
  return {
    unnamed: unnamed,
    pictures: pictures,
    headless: headless,
    unscoped: unscoped,
    h1: document.querySelectorAll("h1").length,
    main: document.querySelectorAll("main, [role=main]").length,
    mainNav: navs.length,
    current: navs.length ? Array.from(navs[0].querySelectorAll("[aria-current=page]")).map(text) : [],
  };
}"""

WIDE = """() => {
  const edge = document.documentElement.clientWidth + 1;
  const clipped = (el) => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== "visible") return true;
    }
    return false;
  };
  const culprits = Array.from(document.querySelectorAll("body *")).filter((el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.right > edge && !clipped(el);
  });
  const wide = Array.from(document.querySelectorAll("body, body *")).filter(
    (el) => el.getBoundingClientRect().right > edge && getComputedStyle(el).overflowX === "visible"
  ).map((el) => el.tagName + "." + el.className + "#" + el.id + " " + Math.round(el.getBoundingClientRect().right));
  return [document.documentElement.scrollWidth, document.documentElement.clientWidth,
    culprits.slice(-5).map((el) => el.outerHTML.slice(0, 120)).concat(wide.slice(0, 12))];
}"""

WHERE = """() => {
  const el = document.activeElement;
  if (!el || el === document.body) return "body";
  if (el.classList.contains("skip")) return "skip";
  if (el.closest("header nav")) return "nav";
  if (el.closest("header")) return "header";
  if (el.closest("main")) return "main";
  return el.tagName;
}"""


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1 and db1 and a playbooks directory."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n\n[db]\ndb1\n")
    write(tmp_path / "books" / "release.yml", BOOK)
    server = start_server(inventory, "--playbooks", str(tmp_path / "books"))
    start_agent(server, "web1")
    start_agent(server, "db1")
    return server


def audit(page: Any, url: str, section: str) -> None:
    """The DOM checks of one page at the context's present width."""
    found = page.evaluate(AUDIT)
    where = f"{url}: {found}"
    assert found["unnamed"] == [], where
    assert found["pictures"] == [], where
    assert found["headless"] == [], where
    assert found["unscoped"] == [], where
    assert (found["h1"], found["main"], found["mainNav"]) == (1, 1, 1), where
    assert found["current"] == [section], where


def no_sideways_scroll(page: Any, url: str) -> None:
    scroll, client, culprits = page.evaluate(WIDE)
    assert scroll <= client, f"{url} scrolls sideways: {scroll} > {client}: {culprits}"


def tab_order(page: Any, url: str) -> None:
    """From the top, Tab reaches the skip link first, then the navigation, then the content;
    the skip link itself moves focus to the content."""
    page.evaluate(
        "() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }"
    )
    page.keyboard.press("Tab")
    assert page.evaluate(WHERE) == "skip", url
    seen = ["skip"]
    for _ in range(40):
        page.keyboard.press("Tab")
        where = page.evaluate(WHERE)
        if where != seen[-1]:
            seen.append(where)
        if where == "main":
            break
    order = [w for w in seen if w in ("skip", "nav", "main")]
    assert order == ["skip", "nav", "main"], f"{url}: {seen}"
    page.locator("a.skip").focus()
    page.keyboard.press("Enter")
    wait_until(lambda: page.evaluate("() => document.activeElement.id") == "main", what="skip")


@pytest.mark.timeout(600)
def test_every_page_is_named_landmarked_keyboard_reachable_and_fits(
    fleet: ServerHandle, browser: Any, consoles: list[Console]
) -> None:
    adhoc = fleet.wait_job(
        fleet.submit("all", 'for i in $(seq 1 40); do echo "INFO line $i"; done')["job"]["id"]
    )
    book = fleet.post("/api/playbooks/run", {"name": "release.yml", "text": BOOK})["job"]
    fleet.wait_job(book["id"])
    fleet.post("/api/templates", TEMPLATE)
    fleet.post("/api/templates/greet/launch", {"params": {"env": "staging"}})
    run = adhoc["runs"][0]["id"]
    pages = [
        ("/", "Dashboard"),
        ("/runs", "Runs"),
        (f"/runs/{run}", "Ad hoc"),
        (f"/jobs/{adhoc['job']['id']}", "Ad hoc"),
        (f"/jobs/{adhoc['job']['id']}?view=grouped", "Ad hoc"),
        (f"/jobs/{book['id']}", "Playbooks"),
        ("/adhoc", "Ad hoc"),
        ("/agents", "Agents"),
        ("/agents/web1", "Agents"),
        ("/agents/web1/revoke", "Agents"),
        ("/playbooks", "Playbooks"),
        ("/templates", "Templates"),
        ("/templates/greet", "Templates"),
        ("/approvals", "Approvals"),
        ("/schedules", "Schedules"),
        ("/admin/users", "Users"),
        ("/admin/tokens", "Tokens"),
        ("/admin/inventory", "Inventory"),
        ("/admin/approval-rules", "Approval rules"),
        ("/audit", "Audit"),
    ]
    console = Console(browser, fleet)
    consoles.append(console)
    page = console.page
    for url, section in pages:
        page.set_viewport_size({"width": 1280, "height": 860})
        page.goto(url)
        page.wait_for_load_state("networkidle")
        audit(page, url, section)
        no_sideways_scroll(page, url)
        tab_order(page, url)
        page.set_viewport_size({"width": 390, "height": 844})
        page.goto(url)
        page.wait_for_load_state("networkidle")
        audit(page, url, section)
        no_sideways_scroll(page, url)
    page.goto(f"/runs/{run}")
    page.wait_for_load_state("networkidle")
    # the state and the log's status are announced where they change
    assert page.get_by_test_id("log-status").get_attribute("aria-live") == "polite"
    assert page.locator("#run-state").get_attribute("aria-live") == "polite"
    assert page.locator("#timeline canvas").first.get_attribute("aria-describedby") == (
        "timeline-summary"
    )
    page.locator("#logview .logline").first.wait_for()
    page.evaluate("() => window.scrollTo(0, document.getElementById('logview').offsetTop - 220)")
    screenshot(page, "run-phone")
    page.goto(f"/jobs/{adhoc['job']['id']}")
    assert page.locator("#job-state").get_attribute("aria-live") == "polite"
    assert page.get_by_test_id("job-summary").get_attribute("aria-live") == "polite"


def test_sign_in_page_is_labelled_and_fits_a_phone(fleet: ServerHandle, browser: Any) -> None:
    """Before sign-in: the form's fields are named, the user name field has the focus with the
    skip link just before it, and the page fits 390 px."""
    context = browser.new_context(base_url=fleet.url, viewport={"width": 390, "height": 844})
    try:
        page = context.new_page()
        page.goto("/login")
        found = page.evaluate(AUDIT)
        assert (found["unnamed"], found["pictures"], found["h1"], found["main"]) == ([], [], 1, 1)
        assert found["mainNav"] == 0, found  # no navigation before sign-in
        no_sideways_scroll(page, "/login")
        # the user name field has the focus; the skip link is the one stop before it
        assert page.evaluate("() => document.activeElement.name") == "username"
        page.keyboard.press("Shift+Tab")
        assert page.evaluate(WHERE) == "skip"
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.name") == "username"
    finally:
        context.close()
