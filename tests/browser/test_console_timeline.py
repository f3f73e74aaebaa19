"""The run page's story chart and the host page in a real Chromium, against a real server and a
real agent: a retry and a kill as marks at their times, click-to-log, live updates."""

from __future__ import annotations

import re
import shlex
import statistics
import sys
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

FAST = ("--metrics-interval", "1", "--metrics-active-interval", "0.5")
MIB = 1 << 20
HELD = 2000  # MiB the hot run holds (host memory moves by several hundred MiB on a busy machine)
ROSE = 1000  # MiB above the agent's baseline that count as the rise
# A run that holds HELD MiB and keeps one CPU busy for 6 s, saying so in its output.
HOT = f"""
import time
print("hot: started", flush=True)
time.sleep(2)
held = b"x" * ({HELD} << 20)
print("MARK holding {HELD} MiB", flush=True)
end = time.time() + 6
tick = time.time()
while time.time() < end:
    if time.time() >= tick:
        print("hot: holding, burning a CPU", flush=True)
        tick += 0.5
del held
print("hot: released", flush=True)
time.sleep(2)
"""
# what the chart holds: its series' labels and how many points each has
SERIES = """() => {
  const u = window.easytaskTimeline.plot;
  return u.series.map((s, i) => [s.label || '', s.show !== false,
    i ? u.data[i].filter((v) => v !== null && v !== undefined).length : u.data[0].length]);
}"""

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
    start_agent(server, "story1", "--metrics-interval", "0")  # no host metrics
    return server


@pytest.fixture
def sampled(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server and one agent sampling its host every second, twice a second while it runs."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[hot]\nhot1\n")
    server = start_server(inventory)
    start_agent(server, "hot1", *FAST)
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


def metrics(server: ServerHandle, agent: str, since: float, until: float) -> dict[str, Any]:
    """The agent's samples in [since, until] from the real endpoint (epoch seconds)."""
    return dict(server.get(f"/api/agents/{agent}/metrics", since=since, until=until))


def fmt_bytes(n: float) -> str:
    """As the console's charts.js writes bytes."""
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    i = 0
    while abs(n) >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:.1f} {units[i]}" if i else f"{round(n)} {units[i]}"


def stood_out(data: dict[str, Any]) -> str:
    """What the summary says stood out over these samples, as charts.js decides it."""
    notes = []
    swap = [v for v in data["swap_used"] if v is not None]
    if swap and max(swap) > 0:
        notes.append(f"swap in use (peak {fmt_bytes(max(swap))})")
    for name, label in (("disk_root_pct", "/"), ("disk_work_pct", "the working directory")):
        pct = [v for v in data[name] if v is not None]
        if pct and max(pct) > 90:
            notes.append(f"disk of {label} over 90 % ({max(pct):.0f} %)")
    load = [v for v in data["load1"] if v is not None]
    cpus = data["cpus"] or 0
    if cpus > 0 and load and max(load) > cpus:
        notes.append(f"load over the CPUs (peak {max(load):.2f} on {cpus})")
    return "; ".join(notes) or "nothing"


@pytest.mark.timeout(300)
def test_a_hot_run_shows_its_rise_on_the_chart_aligned_with_its_output(
    sampled: ServerHandle, browser: Any, consoles: list[Console]
) -> None:
    """A run holding 2,000 MiB and burning a CPU on an agent that samples its host: the samples
    around the line it prints when it holds the memory are higher than the agent's baseline
    before the run, the moment of the peak seeks to the lines printed while held, and in
    Chromium the chart draws CPU, memory and load from the real endpoint, the summary reads
    those samples, the host page draws its 24 h charts and the agents page its sparkline from
    one request."""
    server = sampled
    wait_until(
        lambda: len(server.get("/api/agents/hot1/metrics")["t"]) >= 6,
        timeout=60,
        what="a baseline of samples before the run",
    )
    job = server.submit("hot1", f"{sys.executable} -c {shlex.quote(HOT)}")
    done = server.wait_job(job["job"]["id"], timeout=120)
    run_id = job["runs"][0]["id"]
    assert done["runs"][0]["state"] == "success", done
    lines = server.log_lines(run_id)
    marker = next(ln for ln in lines if ln["text"].startswith("MARK holding"))
    released = next(ln for ln in lines if ln["text"] == "hot: released")
    data = server.get(f"/api/runs/{run_id}/timeline")
    assert data["final"] and data["agent"] == "hot1"
    start, end = data["start"], data["end"]
    since, until = start - data["lead"], end + max(2.0, (end - start) * 0.03)  # the chart's range
    wait_until(
        lambda: metrics(server, "hot1", until, time.time() + 60)["t"],
        timeout=60,
        what="the samples of the chart's whole range stored",
    )

    # the data: memory up by most of what the run held, from its marker line to its release
    base = metrics(server, "hot1", start - 60, start)
    assert len(base["t"]) >= 3, base["t"]
    base_mem = statistics.median(base["mem_used"])
    base_cpu = statistics.mean(base["cpu"])
    window = metrics(server, "hot1", since, until)
    points = list(zip(window["t"], window["mem_used"], window["cpu"], strict=True))
    held = [p for p in points if marker["ts"] + 0.6 <= p[0] <= released["ts"] - 0.1]
    before = [p for p in points if start <= p[0] <= marker["ts"] - 1.0]
    assert len(held) >= 4 and before, (marker["ts"], released["ts"], window["t"])
    assert statistics.median(p[1] for p in held) > base_mem + ROSE * MIB, (base_mem, held)
    assert min(p[1] for p in before) < base_mem + ROSE * MIB, (base_mem, before)
    # CPU: higher than before the run, unless the host was busy already (a loaded machine)
    held_cpu = statistics.mean(p[2] for p in held)
    assert held_cpu > base_cpu or held_cpu >= 90, (base_cpu, held)
    # the moment memory peaked is when the run printed that it held it
    peak_at = max(points, key=lambda p: p[1])[0]
    found = server.get(f"/api/runs/{run_id}/seek", at=peak_at)
    assert marker["seq"] <= found["seq"] <= released["seq"], (peak_at, found, marker, released)

    # the page: the chart draws CPU, memory and load from those samples
    one = Console(browser, server)
    consoles.append(one)
    violations = csp_watch(one)
    page = one.page
    page.goto(f"/runs/{run_id}")
    page.locator("#timeline[data-final='1'] .tl-plot .uplot canvas").wait_for()
    page.get_by_test_id("peak-mem").wait_for()
    shown = page.evaluate("() => window.easytaskTimeline.metrics")
    # the page asked for the same range (to the millisecond): the same samples
    assert len(shown["t"]) >= len(window["t"]) - 1
    assert set(shown["t"]) <= set(window["t"])
    drawn = {label: (visible, n) for label, visible, n in page.evaluate(SERIES)}
    for label in ("CPU %", "memory %", "load"):
        assert drawn[label] == (True, len(shown["t"])), drawn
    assert drawn["lines/s"][1] >= 1
    legend = page.locator("#timeline .u-legend").inner_text()
    for label in ("lines/s", "CPU %", "memory %", "load"):
        assert label in legend
    assert "no host metrics" not in page.get_by_test_id("timeline-status").inner_text()
    # the summary reads them: peak memory (while held), average CPU, what stood out
    assert page.get_by_test_id("peak-mem").inner_text() == fmt_bytes(max(window["mem_used"]))
    cpu = [v for v in shown["cpu"] if v is not None]
    assert page.get_by_test_id("avg-cpu").inner_text() == f"{sum(cpu) / len(cpu):.1f} %"
    assert page.get_by_test_id("stood-out").inner_text() == stood_out(shown)
    # memory on the chart is higher at the marker's moment than at the run's start
    mem_at = page.evaluate(
        """(ats) => {
          const u = window.easytaskTimeline.plot;
          const i = u.series.findIndex((s) => s.label === 'memory %');
          return ats.map((at) => {
            let best = null;
            u.data[0].forEach((t, j) => {
              if (u.data[i][j] != null && (best === null || Math.abs(t - at) < Math.abs(u.data[0][best] - at))) best = j;
            });
            return u.valToPos(u.data[i][best], '%');
          });
        }""",
        [held[len(held) // 2][0], before[0][0]],
    )
    assert mem_at[0] < mem_at[1]  # higher up on screen
    page.evaluate("document.getElementById('timeline').closest('section').scrollIntoView()")
    screenshot(page, "run-timeline-metrics")

    # the host page: 24 h charts from the endpoint (resolution auto: minutes over 24 h)
    with page.expect_response(re.compile(r"/api/agents/hot1/metrics\?")) as answer:
        page.goto("/agents/hot1")
    asked = answer.value
    assert "resolution=auto" in asked.url and asked.ok
    host = asked.json()
    assert host["resolution"] == "minute" and host["t"], host
    page.locator("#host-charts .chart canvas").first.wait_for()
    assert page.locator("#host-charts .chart").count() == 3
    assert page.get_by_test_id("host-metrics-status").is_hidden()
    assert page.get_by_test_id("agent-status").inner_text() == "online"
    assert "hostname" in page.get_by_test_id("facts").inner_text()
    page.locator(f"tr[data-run='{run_id}'] .state-success").wait_for()
    assert page.locator("[data-testid=link-history] tr[data-action='agent.online']").count() >= 1
    screenshot(page, "host-metrics")

    # the agents page: every sparkline from one request
    asked_urls: list[str] = []
    page.on("request", lambda req: asked_urls.append(req.url) if "/metrics" in req.url else None)
    with page.expect_response(re.compile(r"/api/agents/metrics/recent\?minutes=60")) as answer:
        page.goto("/agents")
    recent = answer.value.json()["agents"]["hot1"]
    spark = page.locator("tr[data-agent=hot1] .spark")
    page.locator("tr[data-agent=hot1] .spark canvas").wait_for()
    assert spark.get_attribute("data-points") == str(len(recent["t"]))
    assert len(asked_urls) == 1, asked_urls
    assert not violations, violations
