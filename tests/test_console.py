"""Console pages and the log endpoints behind them, over HTTP against a real server and agents."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle

RUN_ROW = re.compile(r'<tr data-run="(\d+)">')


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1 and db1 in groups web and db."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n\n[db]\ndb1\n")
    server = start_server(inventory)
    start_agent(server, "web1")
    start_agent(server, "db1")
    return server


@pytest.fixture
def admin(fleet: ServerHandle):
    client = Browserless(fleet)
    assert client.login("admin", admin_password(fleet)).status_code == 303
    yield client
    client.close()


def run_ids(page: str) -> list[int]:
    return [int(x) for x in RUN_ROW.findall(page)]


def sse_events(text: str) -> list[tuple[int | None, dict[str, Any]]]:
    """(id, data) of each event in an event-stream body."""
    out = []
    for block in text.split("\n\n"):
        ident = None
        data = None
        for line in block.splitlines():
            if line.startswith("id: "):
                ident = int(line[4:])
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if data is not None:
            out.append((ident, data))
    return out


def test_adhoc_form_submits_and_every_page_renders(fleet: ServerHandle, admin: Browserless) -> None:
    """The ad hoc form starts a job and redirects to its grid; every page shows the result."""
    resp = admin.form_post(
        "/adhoc", {"pattern": "all", "command": "echo hello-console", "timeout": "30s"}
    )
    assert resp.status_code == 303
    job_id = int(resp.headers["location"].rsplit("/", 1)[1])
    data = fleet.wait_job(job_id)
    assert data["job"]["submitted_by"] == "admin" and data["job"]["source"].startswith("console")
    run_id = data["runs"][0]["id"]
    job_page = admin.http.get(f"/jobs/{job_id}").text
    assert 'data-host="web1"' in job_page and 'data-host="db1"' in job_page
    dashboard = admin.http.get("/").text
    assert re.search(r'data-testid="agents-online"><b>2</b>', dashboard)
    assert f'href="/jobs/{job_id}"' in dashboard
    assert set(run_ids(admin.http.get("/runs").text)) == {r["id"] for r in data["runs"]}
    run_page = admin.http.get(f"/runs/{run_id}").text
    assert "echo hello-console" in run_page and "finished" in run_page
    agents = admin.http.get("/agents").text
    assert 'data-agent="web1"' in agents and "online" in agents
    assert admin.http.get("/playbooks").status_code == 200
    assert admin.http.get("/runs/999999").status_code == 404
    bad = admin.form_post("/adhoc", {"pattern": "web:&nosuchgroup", "command": "true"})
    assert bad.status_code == 400 and "nosuchgroup" in bad.text


def test_command_and_output_are_escaped_in_pages(fleet: ServerHandle, admin: Browserless) -> None:
    """Markup in a command or its output is shown as text, never as HTML."""
    payload = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    job = fleet.submit("web1", f"echo '{payload}'")
    data = fleet.wait_job(job["job"]["id"])
    run_id = data["runs"][0]["id"]
    for path in (f"/runs/{run_id}", f"/jobs/{job['job']['id']}", "/runs", "/"):
        page = admin.http.get(path).text
        assert "<script>alert" not in page and "<img src=x" not in page, path
    assert html.escape("<script>alert(1)</script>") in admin.http.get(f"/runs/{run_id}").text
    # the API hands out the text as it was printed: escaping is the page's job
    assert admin.http.get(f"/api/runs/{run_id}/lines").json()["lines"][0]["text"] == payload
    csp = admin.http.get(f"/runs/{run_id}").headers["content-security-policy"]
    assert "script-src 'self'" in csp


def test_runs_filters_and_keyset_pages(fleet: ServerHandle, admin: Browserless) -> None:
    """Status, host (with *), task, user, output text and time filters; pages by run id."""
    add_user(fleet, "otto", "operator", "operator-pass-1")
    ok = fleet.wait_job(fleet.submit("web1", "echo needle-alpha; echo INFO done")["job"]["id"])
    bad = fleet.wait_job(fleet.submit("db1", "echo other output; exit 3")["job"]["id"])
    otto = Browserless(fleet)
    assert otto.login("otto", "operator-pass-1").status_code == 303
    otto.refresh_csrf()
    resp = otto.api_post("/api/jobs", {"pattern": "web1", "command": "echo by-otto"})
    assert resp.status_code == 201
    by_otto = fleet.wait_job(resp.json()["job"]["id"])
    otto.close()
    ok_id, bad_id, otto_id = ok["runs"][0]["id"], bad["runs"][0]["id"], by_otto["runs"][0]["id"]

    def ids(**params: Any) -> list[int]:
        resp = admin.http.get("/runs", params=params)
        assert resp.status_code == 200, resp.text
        return run_ids(resp.text)

    assert ids() == [otto_id, bad_id, ok_id]
    assert ids(status="failed") == [bad_id]
    assert ids(status=["failed", "success"]) == [otto_id, bad_id, ok_id]
    assert ids(status="success,failed") == [otto_id, bad_id, ok_id]
    assert ids(host="web1") == [otto_id, ok_id]
    assert ids(host="d*") == [bad_id]
    assert ids(task="needle") == [ok_id]
    assert ids(user="otto") == [otto_id]
    assert ids(user="admin", host="web1") == [ok_id]
    assert ids(q="needle-alpha") == [ok_id]
    assert ids(q="other output") == [bad_id]
    assert ids(q="output other") == []  # a phrase, in order
    for hostile in ('"', "needle AND (", "NEAR(a b", "*", "-x", "a:b"):
        assert ids(q=hostile) == [], hostile
    refused = admin.http.get("/runs", params={"q": "\x00"})
    assert refused.status_code == 400 and "a NUL character is not allowed" in refused.text
    assert ids(since="1h") == [otto_id, bad_id, ok_id]
    assert ids(until="1h") == []
    assert ids(since="2000-01-01T00:00", until="2999-01-01") == [otto_id, bad_id, ok_id]
    bad_time = admin.http.get("/runs", params={"since": "yesterday-ish"})
    assert bad_time.status_code == 400 and "not a time" in bad_time.text
    assert admin.http.get("/runs", params={"status": "bogus"}).status_code == 400
    # keyset pages: newest first, each page links the next with the filters kept
    first = admin.http.get("/runs", params={"limit": 1, "host": "web1"}).text
    assert run_ids(first) == [otto_id]
    older = re.search(r'href="([^"]+)" rel="next"', first)
    assert older, first
    second = admin.http.get(html.unescape(older.group(1))).text
    assert run_ids(second) == [ok_id]
    assert 'rel="next"' not in second
    newer = re.search(r'href="([^"]+)" rel="prev"', second)
    assert newer
    assert run_ids(admin.http.get(html.unescape(newer.group(1))).text) == [otto_id]
    # a text search links to the run with the search prefilled
    assert (
        f'href="/runs/{ok_id}?q=needle-alpha"'
        in admin.http.get("/runs", params={"q": "needle-alpha"}).text
    )


def test_run_events_resume_after_last_event_id(fleet: ServerHandle, admin: Browserless) -> None:
    """The run SSE stream sends seq as the event id and resumes after Last-Event-ID, live too."""
    stop = fleet.state_dir / "stop-run"
    job = fleet.submit(
        "web1",
        f"i=0; while [ ! -e {stop} ]; do i=$((i+1)); echo tick $i; sleep 0.05; done; echo bye",
    )
    run_id = job["runs"][0]["id"]
    seen: list[int] = []
    with admin.http.stream("GET", f"/api/runs/{run_id}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        buf = ""
        for chunk in resp.iter_text():
            buf += chunk
            *done, buf = buf.split("\n\n")
            for ident, data in sse_events("\n\n".join(done)):
                if data["t"] == "line":
                    assert ident == data["seq"]
                    seen.append(ident)
            if len(seen) >= 5:
                break
    assert seen == list(range(1, len(seen) + 1))
    last = seen[-1]
    stop.touch()
    fleet.wait_job(job["job"]["id"])
    resumed = admin.http.get(f"/api/runs/{run_id}/events", headers={"last-event-id": str(last)})
    events = sse_events(resumed.text)
    seqs = [d["seq"] for _, d in events if d["t"] == "line"]
    total = len(fleet.log_lines(run_id))
    assert seqs == list(range(last + 1, total + 1))
    assert events[-1][1] == {"t": "end", "run": run_id, "state": "success", "exit_code": 0}
    # ?after= is the same for a first connection; Last-Event-ID wins on a reconnect
    after = sse_events(
        admin.http.get(f"/api/runs/{run_id}/events", params={"after": total - 1}).text
    )
    assert [d["seq"] for _, d in after if d["t"] == "line"] == [total]
    both = admin.http.get(
        f"/api/runs/{run_id}/events", params={"after": 0}, headers={"last-event-id": str(total)}
    )
    assert [d for _, d in sse_events(both.text) if d["t"] == "line"] == []


def test_log_windows_search_and_raw_download(fleet: ServerHandle, admin: Browserless) -> None:
    """Windows by position (all levels or filtered), search positions and the raw text agree."""
    cmd = 'seq 1 1000 | awk \'{ if ($1 % 10 == 0) print "ERROR e" $1; else print "INFO i" $1 }\''
    data = fleet.wait_job(fleet.submit("web1", cmd)["job"]["id"])
    run_id = data["runs"][0]["id"]
    base = f"/api/runs/{run_id}"

    def get(path: str, **params: Any) -> Any:
        resp = admin.http.get(base + path, params=params)
        assert resp.status_code == 200, resp.text
        return resp.json()

    head = get("/lines", count=1, offset=0, limit=3)
    assert (head["total"], head["max_seq"]) == (1000, 1000)
    assert [ln["text"] for ln in head["lines"]] == ["INFO i1", "INFO i2", "INFO i3"]
    window = get("/lines", offset=500, limit=10)["lines"]
    assert [ln["seq"] for ln in window] == list(range(501, 511))
    errors = get("/lines", level="ERROR", count=1, offset=50, limit=3)
    assert errors["total"] == 100
    assert [ln["text"] for ln in errors["lines"]] == ["ERROR e510", "ERROR e520", "ERROR e530"]
    hinted = get("/lines", level="ERROR", offset=50, limit=3, after_seq=500)
    assert hinted["lines"] == errors["lines"]
    assert get("/lines", level="DEBUG,INFO,WARN,ERROR", offset=0, limit=1)["lines"][0]["seq"] == 1
    found = get("/search", q="E99")
    assert found["matches"] == [{"seq": 990, "pos": 989}]
    assert get("/search", q="e99", level="ERROR")["matches"] == [{"seq": 990, "pos": 98}]
    assert get("/search", q="%")["matches"] == []
    assert get("/search", q="i1", limit=3)["truncated"] is True
    assert admin.http.get(base + "/lines", params={"level": "LOUD"}).status_code == 400
    assert admin.http.get(base + "/search").status_code == 400
    raw = admin.http.get(base + "/raw")
    assert raw.headers["content-type"].startswith("text/plain")
    assert "attachment" in raw.headers["content-disposition"]
    expected = "".join(("ERROR e" if n % 10 == 0 else "INFO i") + f"{n}\n" for n in range(1, 1001))
    assert raw.text == expected
    # the job stream can leave the lines out (the status grid only wants states)
    stream = httpx.get(
        fleet.url + f"/api/jobs/{data['job']['id']}/events",
        params={"lines": 0, "follow": 0},
        headers={"authorization": f"Bearer {fleet.token}"},
    )
    kinds = {d["t"] for _, d in sse_events(stream.text)}
    assert kinds == {"run", "job"}
    # … or the run states (what `easytask run` prints is lines and the end)
    stream = httpx.get(
        fleet.url + f"/api/jobs/{data['job']['id']}/events",
        params={"runs": 0, "follow": 0},
        headers={"authorization": f"Bearer {fleet.token}"},
    )
    events = [d for _, d in sse_events(stream.text)]
    assert {d["t"] for d in events} == {"line", "job"}
    assert [d["text"] for d in events if d["t"] == "line"] == expected.splitlines()


SEARCH_LINES = [
    "progress 50% done",
    "progress 50 percent done",
    "a_b literal underscore",
    "axb no underscore",
    "it's quoted",
    'say "hi" there',
    "back\\slash path",
    "backslash path",
    "MiXeD CaSe Word",
    "NEAR(a b) AND OR NOT * ^ -x col:val",
    "near a b",
]


def test_search_takes_the_query_as_literal_text(fleet: ServerHandle, admin: Browserless) -> None:
    """Search ignores case and finds `%`, `_`, `\\`, quotes and query syntax as plain text."""
    body = "\n".join(SEARCH_LINES)
    data = fleet.wait_job(fleet.submit("web1", f"cat <<'EOF'\n{body}\nEOF")["job"]["id"])
    run_id = data["runs"][0]["id"]
    assert [ln["text"] for ln in fleet.log_lines(run_id)] == SEARCH_LINES

    def seqs(q: str, **params: Any) -> list[int]:
        resp = admin.http.get(f"/api/runs/{run_id}/search", params={"q": q, **params})
        assert resp.status_code == 200, resp.text
        return [m["seq"] for m in resp.json()["matches"]]

    cases = {
        "50%": [1],
        "%": [1],
        "50% d": [1],
        "a_b": [3],
        "_": [3],
        "it's": [5],
        "'": [5],
        '"hi"': [6],
        '"': [6],
        "back\\slash": [7],
        "\\": [7],
        "mixed case": [9],
        "MIXED CASE WORD": [9],
        "NEAR(a b)": [10],
        "AND OR NOT *": [10],
        "*": [10],
        "col:val": [10],
        "-x": [10],
        "near": [10, 11],
        "%%": [],
        "a%b": [],
        "_b literal_": [],
        "hi there": [],
    }
    for q, expected in cases.items():
        assert seqs(q) == expected, q
        # the level-filtered path numbers positions itself: same lines, same semantics
        assert seqs(q, level="INFO,WARN") == expected, q
    for bad in ("x\x00y", "x" * 1001):
        resp = admin.http.get(f"/api/runs/{run_id}/search", params={"q": bad})
        assert resp.status_code == 400, bad[:10]
