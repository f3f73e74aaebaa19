"""The run page's story chart and the host page in a real Chromium, against a real server and a
real agent: a retry and a kill as marks at their times, click-to-log, live updates."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.browser.conftest import Console, screenshot
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle
from tests.support import wait_until as _wait_until
from tests.test_timeline import job_runs, story_book

pytestmark = pytest.mark.browser

# every event mark on the chart: [mark, kind, attempt, at, its centre x, where the chart puts at]
MARKS = """() => {
  const u = window.easytaskTimeline.plot;
  const over = u.over.getBoundingClientRect();
  return Array.from(document.querySelectorAll('#timeline .tl-event')).map((el) => {
    const box = el.getBoundingClientRect();
    const at = Number(el.dataset.at);
    return [el.dataset.mark, el.dataset.kind, el.dataset.attempt || null, at,
            box.left + box.width / 2, over.left + u.valToPos(at, 'x')];
  });
}"""
# where a moment is on screen: [x, y] in the middle of the plotting area's height
POINT = """(at) => {
  const u = window.easytaskTimeline.plot;
  const over = u.over.getBoundingClientRect();
  return [over.left + u.valToPos(at, 'x'), over.top + over.height / 2];
}"""


def wait_until(cond: Any, timeout: float = 30, what: str = "condition") -> Any:
    return _wait_until(cond, timeout=timeout, what=what)


def csp_watch(console: Console) -> list[str]:
    """Console messages that report a Content-Security-Policy violation."""
    seen: list[str] = []
    console.page.on(
        "console",
        lambda msg: seen.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    return seen


@pytest.fixture
def story(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    inventory = write(tmp_path / "inv" / "hosts.ini", "[story]\nstory1\n")
    server = start_server(inventory)
    start_agent(server, "story1")
    return server


@pytest.mark.timeout(300)
def test_story_chart_marks_kill_and_click_to_log(
    story: ServerHandle, browser: Any, consoles: list[Console], tmp_path: Path
) -> None:
    """A run with a retry, watched live, killed from its page: the chart shows both attempts'
    events at their times, the kill, ERROR/WARN marks, and a click scrolls the log there."""
    server = story
    job = server.post("/api/playbooks/run", {"text": story_book("story1", tmp_path / "marker")})
    job_id = job["job"]["id"]
    second = wait_until(
        lambda: next((r for r in job_runs(server, job_id) if r["attempt"] == 2), None),
        timeout=60,
        what="the second attempt",
    )
    run_id = second["id"]
    one = Console(browser, server)
    consoles.append(one)
    violations = csp_watch(one)
    page = one.page
    page.goto(f"/runs/{run_id}")
    timeline = page.get_by_test_id("timeline")
    page.locator("#timeline .tl-plot .uplot canvas").wait_for()
    assert "live" in page.get_by_test_id("timeline-status").inner_text()
    # the first attempt's events and the retry are on the chart while the second one runs
    for mark in ("queued", "started", "end", "retry"):
        page.locator(f"#timeline .tl-event[data-mark={mark}][data-attempt='1']").wait_for()
    page.locator("#timeline .tl-event[data-mark=started][data-attempt='2']").wait_for()
    # live: new WARN lines of the running attempt are marked as they come
    ready = int(timeline.get_attribute("data-ready") or 0)
    ticks = page.locator("#timeline .tl-line.lv-WARN").count()
    wait_until(
        lambda: page.locator("#timeline .tl-line.lv-WARN").count() > ticks,
        timeout=60,
        what="new WARN lines marked live",
    )
    assert int(timeline.get_attribute("data-ready") or 0) > ready
    assert page.get_by_test_id("summary-empty").inner_text() == "no host metrics yet"

    # kill from the page (two clicks); the chart ends with the kill and the end
    page.click("#kill-run")
    page.click("#kill-run")
    page.get_by_test_id("run-state").filter(has_text="terminated").wait_for()
    page.locator("#timeline[data-final='1'] .tl-event[data-mark=kill]").wait_for()
    page.locator("#timeline .tl-event[data-mark=end][data-attempt='2']").wait_for()
    assert "live" not in page.get_by_test_id("timeline-status").inner_text()

    # every mark sits at its event's time, and the times are the server's
    data = server.get(f"/api/runs/{run_id}/timeline")
    shown = page.evaluate(MARKS)
    assert [(m[1], m[3]) for m in shown] == [(e["kind"], e["at"]) for e in data["events"]]
    for mark, kind, _attempt, _at, centre, expected in shown:
        assert abs(centre - expected) <= 1.5, (mark, kind, centre, expected)
    kill = next(m for m in shown if m[0] == "kill")
    retry = next(m for m in shown if m[0] == "retry")
    assert retry[4] < kill[4]
    assert "killed by admin" in page.locator(".tl-event[data-mark=kill]").get_attribute("title")
    lines = server.log_lines(run_id)
    warn_seqs = {ln["seq"] for ln in lines if ln["level"] == "WARN"}
    ticks = page.eval_on_selector_all(
        "#timeline .tl-line", "els => els.map(e => Number(e.dataset.seq))"
    )
    assert set(ticks) == warn_seqs
    page.evaluate("document.getElementById('timeline').closest('section').scrollIntoView()")
    screenshot(page, "run-timeline")

    # click a moment on the chart: the log viewer scrolls to the first line printed then
    target = lines[len(lines) // 2]
    x, y = page.evaluate(POINT, target["ts"])
    page.mouse.click(x, y)
    wait_until(lambda: timeline.get_attribute("data-jump-at"), what="the click's moment")
    at = float(timeline.get_attribute("data-jump-at") or 0)
    expected = next(ln for ln in lines if ln["ts"] >= at)
    assert abs(expected["seq"] - target["seq"]) <= 25  # a pixel is a few lines at most
    logview = page.locator("#logview")
    wait_until(
        lambda: logview.get_attribute("data-jumped") == str(expected["seq"]),
        what="the log viewer at the clicked moment",
    )
    row = page.locator(f"#logview .logline[data-seq='{expected['seq']}']")
    row.wait_for()
    assert "current" in (row.get_attribute("class") or "")
    assert row.inner_text().endswith(expected["text"])
    assert not page.locator("#logview .follow").is_checked()

    # a WARN tick shows its line
    tick = page.locator("#timeline .tl-line").first
    seq = tick.get_attribute("data-seq")
    tick.click()
    wait_until(lambda: logview.get_attribute("data-jumped") == seq, what="the WARN line")
    page.locator(f"#logview .logline.current[data-seq='{seq}']").wait_for()
    assert not violations, violations


@pytest.mark.timeout(300)
def test_host_page_and_sparklines_without_metrics(
    story: ServerHandle, browser: Any, consoles: list[Console]
) -> None:
    """The agents page links each agent to its page; without metrics the sparkline and the
    charts say so; facts, runs and link history are there."""
    server = story
    done = server.submit("story1", "echo fine")
    server.wait_job(done["job"]["id"])
    failed = server.submit("story1", "exit 3")
    server.wait_job(failed["job"]["id"])
    one = Console(browser, server)
    consoles.append(one)
    violations = csp_watch(one)
    page = one.page
    page.click("nav >> text=Agents")
    spark = page.locator("tr[data-agent=story1] .spark")
    wait_until(lambda: spark.get_attribute("data-empty") == "1", what="an empty sparkline")
    assert spark.inner_text() == "—" and spark.get_attribute("title") == "no host metrics yet"
    page.click("tr[data-agent=story1] a[href='/agents/story1']")
    page.wait_for_url(re.compile(r"/agents/story1$"))
    assert page.get_by_test_id("agent-status").inner_text() == "online"
    status = page.get_by_test_id("host-metrics-status")
    wait_until(
        lambda: status.inner_text() == "no host metrics yet",
        what=f"no metrics said: {status.inner_text()!r} {one.errors}",
    )
    assert page.get_by_test_id("outcomes").inner_text() == "1 failed · 1 success"
    page.locator(f"tr[data-run='{failed['runs'][0]['id']}'] .state-failed").wait_for()
    assert page.locator("[data-testid=link-history] tr[data-action='agent.online']").count() >= 1
    assert "hostname" in page.get_by_test_id("facts").inner_text()
    screenshot(page, "host")
    assert not violations, violations


def fake_metrics(start: float, end: float, steady_from: float, cpus: int = 2) -> dict[str, Any]:
    """Samples every second in the columnar form GET /api/agents/{name}/metrics answers with:
    busy and varying before `steady_from`, steady from then on."""
    t = [float(s) for s in range(int(start), int(end) + 1)]
    gib = 1 << 30

    def wave(low: float, high: float) -> list[float]:
        return [
            high if s >= steady_from else low + (high - low) * (1 + math.sin(s / 1800)) / 2
            for s in t
        ]

    n = len(t)
    return {
        "agent": "story1",
        "cpus": cpus,
        "t": t,
        "cpu": wave(5.0, 42.0),
        "iowait": wave(0.0, 3.0),
        "load1": wave(0.2, 3.5),
        "load5": wave(0.2, 2.0),
        "load15": wave(0.2, 1.0),
        "mem_used": wave(0.5 * gib, 1.5 * gib),
        "mem_available": [2.0 * gib] * n,
        "swap_used": wave(0.0, 64.0 * (1 << 20)),
        "disk_root_pct": wave(60.0, 95.0),
        "disk_work_pct": [40.0] * n,
        "net_rx": [0.0] * n,
        "net_tx": [0.0] * n,
        "procs": [100] * n,
    }


@pytest.mark.timeout(300)
def test_metrics_drawn_and_summarised_once_the_endpoint_answers(
    story: ServerHandle, browser: Any, consoles: list[Console]
) -> None:
    """The host metrics endpoint is served by the metrics side of the server; here the browser
    is answered in its documented columnar form, to check that the run chart draws CPU, memory
    and load, that the summary says peak memory, average CPU and what stood out, and that the
    host page and the sparkline draw them."""
    server = story
    job = server.submit("story1", "for i in $(seq 1 20); do echo tick $i; sleep 0.05; done")
    server.wait_job(job["job"]["id"])
    run_id = job["runs"][0]["id"]
    data = server.get(f"/api/runs/{run_id}/timeline")
    now = time.time()
    samples = fake_metrics(now - 6 * 3600, now + 60, data["start"] - 60)
    asked: list[str] = []

    def answer(route: Any) -> None:
        asked.append(route.request.url)
        route.fulfill(status=200, content_type="application/json", body=json.dumps(samples))

    one = Console(browser, server)
    consoles.append(one)
    page = one.page
    page.route(re.compile(r"/api/agents/story1/metrics\?"), answer)
    page.goto(f"/runs/{run_id}")
    page.get_by_test_id("peak-mem").wait_for()
    assert "since=" in asked[0] and "until=" in asked[0]
    legend = page.locator("#timeline .u-legend").inner_text()
    for label in ("lines/s", "CPU %", "memory %", "load"):
        assert label in legend
    stood = page.get_by_test_id("stood-out").inner_text()
    assert "swap in use (peak 64.0 MiB)" in stood
    assert "disk of / over 90 % (95 %)" in stood
    assert "load over the CPUs (peak 3.50 on 2)" in stood
    assert page.get_by_test_id("peak-mem").inner_text() == "1.5 GiB"
    assert page.get_by_test_id("avg-cpu").inner_text() == "42.0 %"
    page.evaluate("document.getElementById('timeline').closest('section').scrollIntoView()")
    screenshot(page, "run-timeline-metrics")

    page.goto("/agents/story1")
    page.locator("#host-charts .chart canvas").first.wait_for()
    assert page.locator("#host-charts .chart").count() == 3
    assert page.get_by_test_id("host-metrics-status").is_hidden()
    screenshot(page, "host-metrics")
    page.goto("/agents")
    page.locator("tr[data-agent=story1] .spark canvas").wait_for()
