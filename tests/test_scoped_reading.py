"""A user's scope limits what they read: a scoped viewer sees none of another group's runs
through the console, the API, search, SSE streams, exports or the dashboard's counts, and an
id outside the scope is not found (a real server, agents in two groups)."""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.support import Browserless
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle

SECRET = "db-only-output"  # printed by db1 alone: must never reach the scoped viewer


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1 (group web) and db1 (group db); viewers vera (scope `web`)
    and una (no scope)."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n\n[db]\ndb1\n")
    server = start_server(inventory)
    for name in ("web1", "db1"):
        start_agent(server, name)
    for name, scope in (("vera", "web"), ("una", "")):
        body = {"name": name, "role": "viewer", "password": f"{name}-pass-12", "scope": scope}
        server.post("/api/users", body)
    return server


def token_client(server: ServerHandle, user: str) -> httpx.Client:
    token = server.post("/api/tokens", {"name": f"{user}-t", "user": user})["token"]
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=60
    )


def sse_events(resp: httpx.Response) -> Iterator[dict[str, Any]]:
    """The data of each event of an SSE response, as it arrives."""
    for line in resp.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[6:])


def history(server: ServerHandle) -> dict[str, Any]:
    """Job `both` on web1 and db1, job `db` on db1 alone (failed): their ids and run ids."""
    both = server.submit("all", "echo hello-{{ inventory_hostname }}", extra_vars={"x": 1})
    both_done = server.wait_job(both["job"]["id"])
    db = server.submit("db", f"echo {SECRET}; exit 3")
    db_done = server.wait_job(db["job"]["id"])
    runs = {r["host"]: r["id"] for r in both_done["runs"]}
    return {
        "both": both["job"]["id"],
        "db": db["job"]["id"],
        "web_run": runs["web1"],
        "db_run": runs["db1"],
        "db_only_run": db_done["runs"][0]["id"],
    }


def test_scoped_viewer_reads_only_their_hosts_through_the_api(fleet: ServerHandle) -> None:
    """Runs, jobs, logs, search, agents and run counts in the API hold only the scope's hosts;
    a job or run outside it answers 404 on every route, as for an id that does not exist."""
    ids = history(fleet)
    vera = token_client(fleet, "vera")
    una = token_client(fleet, "una")

    def hosts(client: httpx.Client, **params: Any) -> set[str]:
        resp = client.get("/api/runs", params=params)
        assert resp.status_code == 200, resp.text
        return {r["host"] for r in resp.json()["runs"]}

    assert hosts(una) == {"web1", "db1"}  # an unscoped viewer reads every host
    assert hosts(vera) == {"web1"}
    assert hosts(vera, host="db1") == set() and hosts(vera, host="*") == {"web1"}
    assert hosts(vera, q=SECRET) == set()  # output search
    assert hosts(una, q=SECRET) == {"db1"}
    assert hosts(vera, status="failed") == set()
    assert hosts(vera, job=str(ids["db"])) == set()

    both = vera.get(f"/api/jobs/{ids['both']}").json()
    assert [r["host"] for r in both["runs"]] == ["web1"]
    picked = vera.get(f"/api/jobs/{ids['both']}", params={"fields": "host,state"}).json()
    assert picked["runs"] == [{"host": "web1", "state": "success"}]
    jobs = vera.get("/api/jobs").json()["jobs"]
    assert [j["id"] for j in jobs] == [ids["both"]]
    assert jobs[0]["runs"] == {"success": 1}  # the db1 run is not counted either
    assert {j["id"] for j in una.get("/api/jobs").json()["jobs"]} == {ids["both"], ids["db"]}

    hidden = [
        f"/api/jobs/{ids['db']}",
        f"/api/jobs/{ids['db']}/events",
        f"/api/jobs/{ids['db']}/deliveries",
        *(
            f"/api/runs/{run}{tail}"
            for run in (ids["db_run"], ids["db_only_run"])
            for tail in ("", "/log", "/lines", "/search?q=x", "/raw", "/events", "/fetched")
        ),
    ]
    for path in hidden:
        resp = vera.get(path)
        assert resp.status_code == 404, (path, resp.status_code, resp.text)
        kind, number = path.split("/")[2:4]  # said as of an id that does not exist
        assert resp.json() == {"error": f"no {kind[:-1]} {number}"}, path
        assert una.get(path).status_code != 404 or path.endswith("/fetched")
    assert vera.get(f"/api/runs/{ids['web_run']}/log").status_code == 200

    assert {a["name"] for a in vera.get("/api/agents").json()["agents"]} == {"web1"}
    assert {a["name"] for a in una.get("/api/agents").json()["agents"]} == {"web1", "db1"}

    metrics = vera.get("/metrics").text
    assert 'easytask_runs{state="failed"} 0' in metrics
    assert 'easytask_runs{state="success"} 1' in metrics
    assert 'easytask_runs{state="failed"} 1' in una.get("/metrics").text
    vera.close()
    una.close()


def test_scoped_viewer_sees_no_other_group_in_streams_exports_and_pages(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """A live job stream carries only the scope's runs and lines; an export (JSON Lines with
    logs, CSV) holds only them and says so in its record; the console's runs, job, run, agents
    and dashboard pages show no host outside the scope, and its ids are not found."""
    ids = history(fleet)
    gate = tmp_path / "gate"
    live = fleet.submit(
        "all",
        f"while [ ! -e {gate} ]; do sleep 0.05; done; echo live-{{{{ inventory_hostname }}}}",
        extra_vars={"x": 1},
    )
    vera = token_client(fleet, "vera")
    seen: list[dict[str, Any]] = []
    with vera.stream("GET", f"/api/jobs/{live['job']['id']}/events") as resp:
        assert resp.status_code == 200
        for event in sse_events(resp):
            seen.append(event)
            if len(seen) == 1:
                gate.touch()  # the stream is subscribed: let both hosts print
            if event["t"] == "job":
                break
    lines = [e["text"] for e in seen if e["t"] == "line"]
    assert "live-web1" in lines and "live-db1" not in lines
    live_runs = {r["host"]: r["id"] for r in fleet.wait_job(live["job"]["id"])["runs"]}
    assert not [e for e in seen if e.get("host") == "db1" or e.get("run") == live_runs["db1"]]
    assert seen[-1] == {"t": "job", "job": live["job"]["id"], "state": "success"}

    export = vera.get("/api/export", params={"format": "jsonl", "logs": "1"})
    assert export.status_code == 200
    records = [json.loads(line) for line in export.text.splitlines()]
    assert {r["host"] for r in records if r["type"] == "run"} == {"web1"}
    texts = [r["text"] for r in records if r["type"] == "line"]
    assert "hello-web1" in texts and "hello-db1" not in texts and SECRET not in texts
    manifest = vera.get(f"/api/exports/{export.headers['x-easytask-export']}/manifest").json()
    assert manifest["filters"] == {"scope": "web"} and manifest["rows"]["runs"] == 2
    csv = vera.get("/api/export", params={"format": "csv"}).text
    assert "web1" in csv and "db1" not in csv
    assert "db1" in fleet.http.get("/api/export", params={"format": "csv"}).text
    vera.close()

    console = Browserless(fleet)
    assert console.login("vera", "vera-pass-12").status_code == 303
    runs_page = console.http.get("/runs").text
    assert "web1" in runs_page and "db1" not in runs_page
    assert "db1" not in console.http.get("/runs", params={"q": SECRET}).text
    dashboard = console.http.get("/").text
    assert "db1" not in dashboard and "No recent failures." in dashboard
    assert "<b>1</b> agents online" in dashboard
    assert "db1" not in console.http.get(f"/jobs/{ids['both']}").text
    assert "web1" in console.http.get("/agents").text
    assert "db1" not in console.http.get("/agents").text
    assert "db1" not in console.http.get(f"/runs/{ids['web_run']}").text
    for path in (f"/jobs/{ids['db']}", f"/runs/{ids['db_run']}", f"/runs/{ids['db_only_run']}"):
        page = console.http.get(path)
        assert page.status_code == 404 and SECRET not in page.text, path
    # an agent's page outside the scope is not found; inside it, its recent runs are in scope
    assert console.http.get("/agents/db1").status_code == 404
    agent_page = console.http.get("/agents/web1")
    assert agent_page.status_code == 200 and "db1" not in agent_page.text
    console.close()
    una = Browserless(fleet)  # the same pages show every host to a user without a scope
    assert una.login("una", "una-pass-12").status_code == 303
    assert "db1" in una.http.get("/runs").text
    assert una.http.get(f"/runs/{ids['db_run']}").status_code == 200
    una.close()


# Store reads of jobs and runs the web layer may make itself, each after the Reader has let the
# job or run through (or for the metrics token, which reads the whole server).
GATED = {
    ("sse.py", "get_run"),  # the run stream: runlog.events asked the Reader for the run
    ("sse.py", "get_job"),  # the job stream's end: api_jobs.job_events asked for the job
    ("console_pages.py", "get_job"),  # the run page's job: the Reader gave the run
    ("ops.py", "run_state_counts"),  # /metrics with the metrics token
}
READS = {
    "get_run",
    "get_job",
    "job_runs",
    "find_runs",
    "find_jobs",
    "list_jobs",
    "job_state_counts",
    "run_state_counts",
    "read_job_lines",
    "job_stream_start",
}


def test_web_layer_reads_jobs_and_runs_only_through_the_reader() -> None:
    """No web module reads jobs or runs from the store except through `service.reading`
    (the few reads after the Reader let a job or run through are listed), so no door can
    forget the scope."""
    found = set()
    for path in sorted((Path(__file__).parent.parent / "easytask" / "web").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in READS:
                owner = node.value
                name = owner.attr if isinstance(owner, ast.Attribute) else getattr(owner, "id", "")
                if name == "store":
                    found.add((path.name, node.attr))
    assert found == GATED
