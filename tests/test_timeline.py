"""A run's story on one time axis (/api/runs/{id}/timeline, /seek) and the host page, against a
real server and real agents: a retry, a kill, an agent killed and back, ERROR/WARN marks."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.support import Browserless, add_user
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, wait_until

STORY = """\
name: story
hosts: {host}
tasks:
  - name: flaky
    retries: 1
    retry_delay: 0.5s
    shell: |
      if [ ! -e {marker} ]; then
        touch {marker}; echo "INFO first try"; echo "ERROR first try failed" >&2; exit 1
      fi
      for i in $(seq 1 2000); do
        echo "INFO tick $i"
        if [ $((i % 10)) -eq 0 ]; then echo "WARN slow $i"; fi
        sleep 0.05
      done
"""


def story_book(host: str, marker: Path) -> str:
    return textwrap.dedent(STORY).format(host=host, marker=marker)


def job_runs(server: ServerHandle, job_id: int) -> list[dict[str, Any]]:
    return sorted(server.get(f"/api/jobs/{job_id}")["runs"], key=lambda r: r["id"])


def start_story(server: ServerHandle, host: str, tmp_path: Path) -> tuple[int, dict[str, Any]]:
    """Submit the story playbook; return its job id and its second attempt once it prints."""
    job = server.post("/api/playbooks/run", {"text": story_book(host, tmp_path / "marker")})
    job_id = job["job"]["id"]

    def second() -> dict[str, Any] | None:
        runs = [r for r in job_runs(server, job_id) if r["attempt"] == 2]
        if runs and len(server.log_lines(runs[0]["id"])) >= 25:
            return runs[0]
        return None

    return job_id, wait_until(second, timeout=60, what="the second attempt printing")


@pytest.fixture
def story_server(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> Any:
    inventory = write(tmp_path / "inv" / "hosts.ini", "[story]\nstory1\n")
    server = start_server(inventory)
    start_agent(server, "story1")
    return server


def test_retry_and_kill_on_one_axis(story_server: ServerHandle, tmp_path: Path) -> None:
    """Both attempts' events, the retry and the kill as marks, in time order; the output's
    density adds up to its lines; ERROR/WARN marks; seek finds the line printed at a moment."""
    server = story_server
    job_id, second = start_story(server, "story1", tmp_path)
    run_id = second["id"]
    live = server.get(f"/api/runs/{run_id}/timeline")
    assert live["final"] is False and live["end"] is None
    assert live["agent"] == "story1"
    server.post(f"/api/runs/{run_id}/kill")
    server.wait_job(job_id)

    data = server.get(f"/api/runs/{run_id}/timeline")
    first = next(r for r in job_runs(server, job_id) if r["attempt"] == 1)
    assert [(a["run"], a["attempt"]) for a in data["attempts"]] == [(first["id"], 1), (run_id, 2)]
    assert data["final"] is True and data["state"] == "terminated"
    times = [e["at"] for e in data["events"]]
    assert times == sorted(times)
    marks = [(e["attempt"], e["mark"]) for e in data["events"] if e["mark"] != "info"]
    for expected in [
        (1, "queued"),
        (1, "dispatched"),
        (1, "started"),
        (1, "end"),
        (1, "retry"),
        (2, "queued"),
        (2, "started"),
        (2, "kill"),
        (2, "end"),
    ]:
        assert expected in marks, (expected, marks)
    order = [m for m in marks if m[1] in ("started", "retry", "kill", "end")]
    assert order.index((1, "retry")) < order.index((2, "started")) < order.index((2, "kill"))
    kill = next(e for e in data["events"] if e["mark"] == "kill")
    assert kill["detail"] == "killed by admin"
    # the chart's span: from the first attempt's queueing to the last one's end
    run_times = [e["at"] for e in data["events"] if e["run"] is not None]
    assert data["start"] <= min(run_times)
    assert data["end"] == pytest.approx(max(run_times), abs=1.0)
    assert data["start"] <= kill["at"] <= data["end"]

    lines = server.log_lines(run_id)
    density = data["density"]
    bucket = density["bucket"]
    assert sum(n * bucket for n in density["lines"]) == pytest.approx(len(lines))
    assert density["t"][0] <= lines[0]["ts"] < density["t"][0] + bucket
    warns = [ln for ln in lines if ln["level"] in ("WARN", "ERROR")]
    assert [m["seq"] for m in data["marks"]] == [ln["seq"] for ln in warns]
    texts = [m["text"] for m in data["marks"] if m["level"] == "WARN"]
    assert len(texts) == len(data["marks"]) and len(texts) >= 2
    assert all(t.startswith("WARN slow") for t in texts[:-1])
    assert "killed by admin" in texts[-1]  # the scheduler's own line about the kill
    assert data["marks"][0]["at"] == pytest.approx(warns[0]["ts"])
    # the first attempt's ERROR line is marked on its own run's chart
    assert [m["text"] for m in server.get(f"/api/runs/{first['id']}/timeline")["marks"]] == [
        "ERROR first try failed"
    ]

    # seek: the first line at or after a moment, its position in the (filtered) view
    middle = lines[len(lines) // 2]
    found = server.get(f"/api/runs/{run_id}/seek", at=middle["ts"])
    first_then = next(ln for ln in lines if ln["ts"] >= middle["ts"])
    assert (found["seq"], found["pos"]) == (first_then["seq"], first_then["seq"] - 1)
    found = server.get(f"/api/runs/{run_id}/seek", at=middle["ts"], level="WARN")
    wanted = next(ln for ln in warns if ln["ts"] >= middle["ts"])
    assert (found["seq"], found["pos"]) == (wanted["seq"], warns.index(wanted))
    after_end = server.get(f"/api/runs/{run_id}/seek", at=lines[-1]["ts"] + 3600)
    assert after_end["seq"] == lines[-1]["seq"]


def test_timeline_requests_checked_and_timeout(story_server: ServerHandle, tmp_path: Path) -> None:
    """Any signed-in user reads a timeline as they read the run; bad input is a 4xx that says
    what is wrong; a timeout is marked as such."""
    server = story_server
    job = server.submit("story1", "echo hello; echo 'ERROR oops'")
    run_id = job["runs"][0]["id"]
    server.wait_job(job["job"]["id"])
    anonymous = httpx.get(f"{server.url}/api/runs/{run_id}/timeline")
    assert anonymous.status_code == 401
    add_user(server, "vera", "viewer", "a-long-viewer-password")
    viewer = Browserless(server)
    try:
        assert viewer.login("vera", "a-long-viewer-password").status_code == 303
        resp = viewer.http.get(f"/api/runs/{run_id}/timeline")
        assert resp.status_code == 200, resp.text
        assert [m["text"] for m in resp.json()["marks"]] == ["ERROR oops"]
        resp = viewer.http.get("/api/runs/999999/timeline")
        assert resp.status_code == 404 and "no run 999999" in resp.json()["error"]
        for bad in ("soon", "-1", "nan", "inf", ""):
            resp = viewer.http.get(f"/api/runs/{run_id}/seek", params={"at": bad})
            assert resp.status_code == 400, (bad, resp.text)
            assert "at must be a time in seconds since the epoch" in resp.json()["error"]
        resp = viewer.http.get(f"/api/runs/{run_id}/seek", params={"at": "1", "level": "LOUD"})
        assert resp.status_code == 400 and "unknown level 'LOUD'" in resp.json()["error"]
    finally:
        viewer.close()
    # a run that times out: its timeout is a mark of its own, before its end
    slow = server.submit("story1", "sleep 30", timeout="1s")
    server.wait_job(slow["job"]["id"])
    events = server.get(f"/api/runs/{slow['runs'][0]['id']}/timeline")["events"]
    marks = [e["mark"] for e in events if e["run"] is not None]
    assert marks.index("timeout") < marks.index("end"), marks
    assert next(e for e in events if e["mark"] == "timeout")["detail"] == "timeout after 1s"


def test_agent_drop_and_return_on_the_run_and_the_host_page(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 of the agent mid-run and a restart: the run's timeline marks the drop and the
    return, the audit log holds both, the host page lists them with the agent's runs and facts."""
    server = start_server()
    agent_proc = start_agent(server, "story1")
    job = server.submit("story1", "for i in $(seq 1 60); do echo tick $i; sleep 0.1; done")
    run_id = job["runs"][0]["id"]
    wait_until(lambda: len(server.log_lines(run_id)) >= 5, what="some output")
    agent_proc.kill9()
    wait_until(lambda: server.agent_status("story1") == "unreachable", what="agent unreachable")
    start_agent(server, "story1", enroll=False, state_dir=tmp_path / "agents" / "story1")
    server.wait_job(job["job"]["id"], timeout=90)

    data = server.get(f"/api/runs/{run_id}/timeline")
    marks = [(e["kind"], e["mark"]) for e in data["events"]]
    assert ("agent.lost", "disconnect") in marks and ("agent.online", "reconnect") in marks
    assert ("agent lost", "disconnect") in marks and ("reattached", "reconnect") in marks
    lost = next(e for e in data["events"] if e["kind"] == "agent.lost")
    back = [e for e in data["events"] if e["kind"] == "agent.online" and e["at"] > lost["at"]]
    assert back, data["events"]
    audit = server.get("/api/audit", action="agent.lost")["events"]
    assert [e["detail"]["agent"] for e in audit] == ["story1"]

    admin = Browserless(server)
    try:
        password = (server.state_dir / "admin.password").read_text().strip()
        assert admin.login("admin", password).status_code == 303
        page = admin.http.get("/agents/story1")
        assert page.status_code == 200
        html = page.text
        assert 'data-action="agent.lost"' in html and 'data-action="agent.online"' in html
        assert html.index('data-action="agent.online"') < html.index('data-action="agent.lost"')
        assert f'href="/runs/{run_id}"' in html
        assert 'data-testid="facts"' in html and "hostname" in html
        assert 'id="host-charts" class="charts card" data-agent="story1"' in html
        listing = admin.http.get("/agents").text
        assert 'href="/agents/story1"' in listing and 'class="spark" data-agent="story1"' in listing
        missing = admin.http.get("/agents/nobody")
        assert missing.status_code == 404 and "no agent &#39;nobody&#39;" in missing.text
    finally:
        admin.close()
