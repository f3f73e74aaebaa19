"""The console in a real Chromium against a real server and real agents."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle
from tests.support import wait_until as _wait_until

pytestmark = pytest.mark.browser


def wait_until(cond: Any, timeout: float = 30, what: str = "condition") -> Any:
    """Poll with a deadline generous enough for a machine running other tests at the same time."""
    return _wait_until(cond, timeout=timeout, what=what)


VISIBLE_SEQS = "els => els.filter(e => !e.hidden && e.dataset.seq).map(e => +e.dataset.seq)"
# every row on screen as [seq or null while its window is loading, text]
SNAPSHOT = "els => els.filter(e => !e.hidden).map(e => [e.dataset.seq || null, e.textContent])"


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1 and db1."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n\n[db]\ndb1\n")
    server = start_server(inventory)
    start_agent(server, "web1")
    start_agent(server, "db1")
    return server


def seqs(page: Any) -> list[int]:
    """Sequence numbers of the log rows on screen."""
    return list(page.eval_on_selector_all("#logview .logline", VISIBLE_SEQS))


def visible_lines(page: Any) -> list[str]:
    return list(
        page.eval_on_selector_all(
            "#logview .logline",
            "els => els.filter(e => !e.hidden && e.dataset.seq).map(e => e.textContent)",
        )
    )


def level_only(page: Any, *levels: str) -> None:
    for box in page.locator("#logview input[name=level]").all():
        if (box.get_attribute("value") in levels) != box.is_checked():
            box.click()


@pytest.mark.timeout(300)
def test_adhoc_live_logs_filters_search_and_kill(
    fleet: ServerHandle, browser: Any, consoles: list[Console]
) -> None:
    """Submit to two agents, watch lines live in two contexts, filter, search, reopen, kill."""
    # some history first, so the dashboard and the runs page have something to show
    fleet.wait_job(fleet.submit("all", "uptime")["job"]["id"])
    fleet.wait_job(fleet.submit("db1", "ls /nonexistent")["job"]["id"])
    one = Console(browser, fleet)
    consoles.append(one)
    p1 = one.page

    # ad hoc: the pattern previews the hosts it matches as it is typed
    p1.click("nav >> text=Ad hoc")
    p1.fill("#pattern", "web:&nosuch")
    preview = p1.get_by_test_id("preview")
    preview.filter(has_text="nosuch").wait_for()
    p1.fill("#pattern", "all")
    preview.filter(has_text="2 host(s)").wait_for()
    assert "web1" in preview.inner_text() and "db1" in preview.inner_text()
    command = (
        'for i in $(seq 1 900); do echo "INFO tick $i"; '
        'if [ $((i % 5)) -eq 0 ]; then echo "ERROR boom $i" >&2; fi; sleep 0.1; done'
    )
    p1.fill("#command", command)
    p1.fill("input[name=timeout]", "5m")
    screenshot(p1, "adhoc")
    p1.click("#adhoc-form button[type=submit]")
    p1.wait_for_url(re.compile(r"/jobs/\d+$"))
    job_id = int(p1.url.rsplit("/", 1)[1])

    # the status grid turns live to running for both agents
    for host in ("web1", "db1"):
        p1.locator(f"#status-grid tr[data-host={host}] .st").filter(has_text="running").wait_for()
    wait_until(lambda: "2 running" in p1.get_by_test_id("job-summary").inner_text(), what="summary")

    # a second user (context) on the dashboard sees the job in flight
    two = Console(browser, fleet)
    consoles.append(two)
    p2 = two.page
    p2.locator(f"a[href='/jobs/{job_id}']").first.wait_for()
    screenshot(p2, "dashboard")
    screenshot(p1, "job")

    # each host's output is one click away; both contexts follow the same run live
    p1.click("#status-grid tr[data-host=web1] a.output")
    p1.wait_for_url(re.compile(r"/runs/\d+$"))
    run_path = urlparse(p1.url).path
    p2.goto(run_path)
    for page in (p1, p2):
        wait_until(lambda page=page: seqs(page), what="first lines")
    start = [max(seqs(p1)), max(seqs(p2))]
    wait_until(
        lambda: max(seqs(p1)) >= start[0] + 6 and max(seqs(p2)) >= start[1] + 6,
        timeout=30,
        what="new lines in both viewers",
    )
    assert p1.get_by_test_id("run-state").inner_text() == "running"
    on_screen = seqs(p1)
    assert on_screen == list(range(on_screen[0], on_screen[0] + len(on_screen)))

    # level filter: only ERROR lines, and new ones keep arriving
    level_only(p1, "ERROR")
    wait_until(
        lambda: visible_lines(p1) and all("ERROR boom" in t for t in visible_lines(p1)),
        what="only ERROR lines",
    )
    shown = len(visible_lines(p1))
    newest = max(wait_until(lambda: seqs(p1), what="ERROR rows"))
    wait_until(lambda: max(seqs(p1)) > newest, timeout=30, what="a new ERROR line live")
    assert all("ERROR boom" in t for t in visible_lines(p1))
    assert "matching lines" in p1.get_by_test_id("log-status").inner_text()
    assert len(visible_lines(p1)) >= shown

    # search in the other viewer: highlighted matches, next and previous
    p2.fill("#logview input[name=q]", "tick 1")
    p2.press("#logview input[name=q]", "Enter")
    count = p2.get_by_test_id("match-count")
    wait_until(lambda: re.match(r"^1 / \d+", count.inner_text()), what="first match")
    current = p2.locator("#logview .logline.current")
    assert "INFO tick 1" in current.inner_text()
    assert p2.locator("#logview .logline.current mark").first.inner_text().lower() == "tick 1"
    p2.click("#logview button.next")
    wait_until(lambda: count.inner_text().startswith("2 / "), what="second match")
    # the counter moves at once, the highlighted row with the next frame
    wait_until(lambda: re.search(r"tick 1\d", current.inner_text()), what="second match shown")
    p2.click("#logview button.prev")
    wait_until(lambda: count.inner_text().startswith("1 / "), what="back to the first match")
    screenshot(p2, "run")

    # kill the job from its grid (two clicks: arm, confirm); both hosts end terminated, live
    p1.goto(f"/jobs/{job_id}")
    p1.click("#kill-job")
    p1.click("#kill-job")
    for host in ("web1", "db1"):
        p1.locator(f"#status-grid tr[data-host={host}] .st").filter(
            has_text="terminated"
        ).wait_for()
    p1.get_by_test_id("job-state").filter(has_text="terminated").wait_for()
    # the viewer that stayed on the run sees the end of it
    p2.get_by_test_id("run-state").filter(has_text="terminated").wait_for()
    assert "killed by admin" in fleet.get(run_path.replace("/runs/", "/api/runs/"))["run"]["reason"]
    p1.click("nav >> text=Agents")
    p1.locator("tr[data-agent=db1]").filter(has_text="online").wait_for()
    screenshot(p1, "agents")

    # history: filter with the form, the URL carries the filters, open the run from there
    p2.click("nav >> text=Runs")
    p2.fill("#run-filters input[name=host]", "web1")
    p2.check("#run-filters input[name=status][value=terminated]")
    p2.fill("#run-filters input[name=q]", "boom")
    p2.click("#run-filters button[type=submit]")
    p2.wait_for_url(re.compile(r"/runs\?"))
    query = parse_qs(urlparse(p2.url).query)
    assert (
        query["host"] == ["web1"] and query["status"] == ["terminated"] and query["q"] == ["boom"]
    )
    rows = p2.locator("table.runs tbody tr")
    assert rows.count() == 1
    screenshot(p2, "runs")
    rows.first.locator("a").first.click()
    p2.wait_for_url(re.compile(r"/runs/\d+\?q=boom$"))
    assert urlparse(p2.url).path == run_path
    p2.get_by_test_id("run-state").filter(has_text="terminated").wait_for()
    wait_until(
        lambda: re.match(r"^\d+ / \d+", p2.get_by_test_id("match-count").inner_text()),
        what="search from the history link",
    )
    assert "boom" in p2.locator("#logview .logline.current").inner_text()


@pytest.mark.timeout(180)
def test_output_markup_is_shown_as_text(
    fleet: ServerHandle, browser: Any, consoles: list[Console]
) -> None:
    """A command printing <script> and <img onerror> shows them as text; nothing runs."""
    console = Console(browser, fleet)
    consoles.append(console)
    page = console.page
    payload = ["<script>window.__xss=1</script>", '<img src=x onerror="window.__xss=2">']
    page.goto("/adhoc")
    page.fill("#pattern", "web1")
    page.fill("#command", "printf '%s\\n' " + " ".join(f"'{p}'" for p in payload))
    page.click("#adhoc-form button[type=submit]")
    page.wait_for_url(re.compile(r"/jobs/\d+$"))
    page.locator("#status-grid tr[data-host=web1] .st").filter(has_text="success").wait_for()
    page.click("#status-grid tr[data-host=web1] a.output")
    page.wait_for_url(re.compile(r"/runs/\d+$"))
    wait_until(lambda: len(visible_lines(page)) == 2, what="two lines")
    assert [t.lstrip("0123456789") for t in visible_lines(page)] == payload
    assert page.get_by_test_id("command").inner_text().count("<script>") == 1
    page.fill("#logview input[name=q]", "<img")
    page.press("#logview input[name=q]", "Enter")
    wait_until(lambda: page.get_by_test_id("match-count").inner_text() == "1 / 1", what="match")
    assert page.locator("#logview mark").inner_text() == "<img"
    assert page.evaluate("window.__xss") is None
    assert page.locator("#logview img, #logview script").count() == 0


def seed_lines(db: Path, run_id: int, first: int, last: int) -> None:
    """Append numbered lines to a stored run (every 1000th an ERROR) straight into the store,
    indexed for full-text search as the log writer indexes them."""
    rows = (
        (
            run_id,
            n,
            time.time(),
            "stdout",
            "ERROR" if n % 1000 == 0 else "INFO",
            ("ERROR " if n % 1000 == 0 else "") + f"line {n:07d}",
        )
        for n in range(first, last + 1)
    )
    with sqlite3.connect(db, timeout=60) as conn:
        top = conn.execute("SELECT coalesce(max(id), 0) FROM log_line").fetchone()[0]
        conn.executemany(
            "INSERT INTO log_line (run_id, seq, ts, stream, level, text) VALUES (?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute(
            "INSERT INTO log_fts(rowid, text) SELECT id, text FROM log_line WHERE id > ?", (top,)
        )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_million_line_log_renders_only_the_rows_on_screen(
    tmp_path: Path,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    browser: Any,
    consoles: list[Console],
) -> None:
    """A 1,000,000-line log opens at its tail, jumps anywhere quickly and keeps ~50 rows in the DOM.

    The lines are appended to the store directly: ingest speed is not what is tested here.
    """
    server = start_server()
    start_agent(server, "web1")
    run_id = server.wait_job(server.submit("web1", "echo line 0000001")["job"]["id"])["runs"][0][
        "id"
    ]
    total = 1_000_000
    seed_lines(server.state_dir / "easytask.db", run_id, 2, total)
    console = Console(browser, server)
    consoles.append(console)
    page = console.page
    page.goto(f"/runs/{run_id}")
    status = page.get_by_test_id("log-status")
    status.filter(has_text="1,000,000 lines").wait_for()
    wait_until(lambda: seqs(page) and max(seqs(page)) == total, what="the tail on screen")
    assert visible_lines(page)[-1].endswith(f"line {total:07d}")
    assert page.locator("#logview .logline").count() < 100
    height = page.eval_on_selector(".logspacer", "e => e.getBoundingClientRect().height")
    assert 1_000_000 < height <= 12_000_000  # capped: browsers cannot lay out 18M px

    def jump(fraction: float) -> list[tuple[int, str]]:
        # scroll, then let two frames pass so the viewer has handled the scroll and re-rendered
        page.eval_on_selector(
            ".logscroll",
            f"s => new Promise(done => {{ s.scrollTop = (s.scrollHeight - s.clientHeight) * {fraction}; "
            "requestAnimationFrame(() => requestAnimationFrame(done)); })",
        )

        def settled() -> list[tuple[int, str]] | None:
            rows = page.eval_on_selector_all("#logview .logline", SNAPSHOT)
            if len(rows) < 20 or any(seq is None for seq, _ in rows):
                return None  # still showing rows whose window is being fetched
            return [(int(seq), text) for seq, text in rows]

        # a window of 200 lines is one indexed query: rows appear at once (the deadline allows
        # for a machine busy with other work)
        return list(wait_until(settled, timeout=15, what=f"rows at {fraction}"))

    for fraction in (0.5, 0.123, 0.999, 0.0, 0.75):
        rows = jump(fraction)
        first = rows[0][0]
        assert [seq for seq, _ in rows] == list(range(first, first + len(rows)))
        assert abs(first - fraction * total) < 1000, (fraction, first)
        assert all(text.endswith(f"line {seq:07d}") for seq, text in rows)
        assert page.locator("#logview .logline").count() < 100

    # wheel scrolling moves a few rows at a time, rendered from the fetched pages
    before = seqs(page)[0]
    for _ in range(10):
        page.mouse.move(400, 600)
        page.mouse.wheel(0, 180)
    wait_until(lambda: seqs(page)[0] > before, what="wheel scroll")

    level_only(page, "ERROR")
    status.filter(has_text="1,000 matching lines").wait_for()
    wait_until(
        lambda: visible_lines(page) and all("ERROR line" in t for t in visible_lines(page)),
        what="only ERROR rows",
    )
    level_only(page, "DEBUG", "INFO", "WARN", "ERROR")
    status.filter(has_text="1,000,000 lines").wait_for()
    page.fill("#logview input[name=q]", "line 0777777")
    page.press("#logview input[name=q]", "Enter")
    wait_until(
        lambda: page.get_by_test_id("match-count").inner_text() == "1 / 1",
        timeout=30,
        what="search result",
    )
    current = page.locator("#logview .logline.current")
    current.wait_for()
    assert current.get_attribute("data-seq") == "777777"
