"""GET /api/jobs (the runs list's filters, cursor pages) and the OpenAPI document made from the
routes, which docs/api.md must match route for route (a real server and agents)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from easytask.store.models import Run
from easytask.store.serialize import RUN_KEYS, RUN_VALUES, run_dict
from easytask.web.api_jobs import JOB_RUN_KEYS
from tests.browser.support import add_user
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle

DAY = timedelta(days=1, seconds=2.5)
API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
# `GET /api/jobs/{id}`, `POST /api/schedules/{name}/enable|disable|run`, `GET /metrics`
DOC_ROUTE = re.compile(
    r"\b(GET|POST|PUT|PATCH|DELETE) (/(?:api/|healthz|readyz|metrics)[\w{}/.|-]*)"
)


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1 and db1."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\n\n[db]\ndb1\n")
    server = start_server(inventory)
    for name in ("web1", "db1"):
        start_agent(server, name)
    return server


def test_api_jobs_filters_and_pages_by_cursor(fleet: ServerHandle) -> None:
    """Jobs come newest first with their runs counted by state; status, host, task, user, kind
    and output text filter them; `before` pages stay the same while new jobs arrive; bad
    filters are refused with a message naming them."""
    add_user(fleet, "otto", "operator", "operator-pass-1")
    first = fleet.wait_job(fleet.submit("web1", "echo needle-one")["job"]["id"])["job"]["id"]
    failed = fleet.wait_job(fleet.submit("db1", "echo oops; exit 3")["job"]["id"])["job"]["id"]
    both = fleet.wait_job(fleet.submit("all", "echo both")["job"]["id"])["job"]["id"]
    otto = fleet.post("/api/tokens", {"name": "t", "user": "otto"})["token"]
    resp = fleet.http.post(
        "/api/jobs",
        json={"pattern": "web1", "command": "echo by-otto"},
        headers={"authorization": f"Bearer {otto}"},
    )
    assert resp.status_code == 201
    by_otto = fleet.wait_job(resp.json()["job"]["id"])["job"]["id"]

    def ids(**params: Any) -> list[int]:
        resp = fleet.http.get("/api/jobs", params=params)
        assert resp.status_code == 200, resp.text
        return [j["id"] for j in resp.json()["jobs"]]

    assert ids() == [by_otto, both, failed, first]
    listed = {j["id"]: j for j in fleet.get("/api/jobs")["jobs"]}
    assert listed[both]["runs"] == {"success": 2} and listed[failed]["runs"] == {"failed": 1}
    assert listed[failed]["state"] == "failed" and listed[first]["kind"] == "adhoc"
    assert ids(status="failed") == [failed]
    assert ids(host="db*") == [both, failed]
    assert ids(task="needle") == [first]
    assert ids(user="otto") == [by_otto]
    assert ids(q="needle-one") == [first]
    assert ids(kind="playbook") == []
    assert ids(since="1h") == ids() and ids(until="1h") == []

    page = fleet.get("/api/jobs", limit=2)
    assert [j["id"] for j in page["jobs"]] == [by_otto, both]
    assert page["next_before"] == both and page["prev_after"] is None
    newer = fleet.wait_job(fleet.submit("web1", "echo later")["job"]["id"])["job"]["id"]
    second = fleet.get("/api/jobs", limit=2, before=page["next_before"])
    assert [j["id"] for j in second["jobs"]] == [failed, first]  # the new job moves nothing
    assert second["next_before"] is None and second["prev_after"] == failed
    back = fleet.get("/api/jobs", limit=2, after=second["prev_after"])
    assert [j["id"] for j in back["jobs"]] == [by_otto, both]
    assert ids(after=str(by_otto)) == [newer]

    for params, message in (
        ({"status": "bogus"}, "unknown status 'bogus'"),
        ({"kind": "nightly"}, "unknown kind 'nightly'"),
        ({"since": "yesterday"}, "not a time or duration"),
        ({"limit": "0"}, "limit must be at least 1"),
        ({"before": "x"}, "before must be"),
    ):
        resp = fleet.http.get("/api/jobs", params=params)
        assert resp.status_code == 400 and message in resp.json()["error"], (params, resp.text)

    out = fleet.cli("jobs", "--status", "failed")
    assert out.returncode == 0, out.stderr
    assert re.search(rf"^{failed}\s+adhoc\s+failed\s+failed=1\s+admin\s", out.stdout, re.M)
    assert f"\n{first} " not in out.stdout


def test_submission_answers_hosts_and_a_job_answers_the_fields_asked(fleet: ServerHandle) -> None:
    """`POST /api/jobs?runs=0` answers the runs' hosts instead of the runs; `GET
    /api/jobs/{id}?fields=...` gives each run those fields alone, with the values the whole
    answer has; a field that is no run's is refused, naming it."""
    resp = fleet.http.post("/api/jobs?runs=0", json={"pattern": "all", "command": "id -un"})
    assert resp.status_code == 201, resp.text
    short = resp.json()
    assert short["hosts"] == ["web1", "db1"] and "runs" not in short
    whole = fleet.wait_job(short["job"]["id"])
    assert [set(r) for r in whole["runs"]] == [set(JOB_RUN_KEYS)] * 2
    assert [r["ran_as"] for r in whole["runs"]] != ["", ""]  # a stored `ran as` event each
    names = ["host", "state", "ran_as", "duration", "changed"]
    picked = fleet.get(f"/api/jobs/{short['job']['id']}", fields=",".join(names))
    assert picked["job"] == whole["job"]
    assert picked["runs"] == [{n: r[n] for n in names} for r in whole["runs"]]
    assert [list(r) for r in picked["runs"]] == [names, names]  # in the order asked
    assert fleet.submit("web1", "true")["runs"][0]["host"] == "web1"  # without: the runs
    for fields, named in (("host,bogus", "'bogus'"), (",", "no run field")):
        resp = fleet.http.get(f"/api/jobs/{short['job']['id']}", params={"fields": fields})
        assert resp.status_code == 400 and named in resp.json()["error"], resp.text
    # each field alone is what `run_dict` gives: unstarted, running, ended
    now = datetime.now(UTC)
    for times in ({}, {"started_at": now}, {"started_at": now, "finished_at": now + DAY}):
        run = Run(id=3, job_id=1, task="t", host="h", connection="agent", command="c", **times)
        assert {name: value(run) for name, value in RUN_VALUES.items()} == run_dict(run)
        assert tuple(run_dict(run)) == RUN_KEYS


def documented() -> set[tuple[str, str]]:
    """(method, path) of every route docs/api.md names; `a|b` alternatives spelt out."""
    found: set[tuple[str, str]] = set()
    for method, path in DOC_ROUTE.findall(API_DOC.read_text()):
        paths = [""]
        for segment in path.strip("/").rstrip(".").split("/"):
            paths = [f"{p}/{alt}" for p in paths for alt in segment.split("|")]
        found.update((method, p) for p in paths)
    return found


def matches(doc_path: str, route_path: str) -> bool:
    """Whether a documented path is one the route serves (a route's `{param}` takes any
    segment; a documented `{param}` only a route's parameter)."""
    doc, route = doc_path.strip("/").split("/"), route_path.strip("/").split("/")
    return len(doc) == len(route) and all(
        r.startswith("{") or (d == r and not d.startswith("{"))
        for d, r in zip(doc, route, strict=True)
    )


def test_openapi_document_lists_every_route_and_docs_match_it(fleet: ServerHandle) -> None:
    """/api/openapi.json describes every API route from the routes themselves (summary, path
    parameters, roles), and docs/api.md documents each of them and no route that does not
    exist."""
    resp = fleet.http.get("/api/openapi.json")
    assert resp.status_code == 200
    spec = resp.json()
    assert spec["openapi"].startswith("3.") and spec["info"]["title"] == "EasyTask API"
    routes = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    assert {("GET", "/api/jobs"), ("POST", "/api/jobs"), ("GET", "/api/openapi.json")} <= routes
    job = spec["paths"]["/api/jobs/{job_id}"]["get"]
    assert job["summary"] == "The job and its runs."
    assert job["parameters"][0] == {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer"},
    }
    assert spec["paths"]["/api/users"]["post"]["x-roles"] == ["admin"]
    assert not [
        p
        for p in spec["paths"]
        if not p.startswith("/api/") and p not in ("/healthz", "/readyz", "/metrics")
    ]  # no console page
    docs = documented()
    undocumented = sorted(
        r for r in routes if not any(m == r[0] and matches(p, r[1]) for m, p in docs)
    )
    assert not undocumented, f"docs/api.md does not document {undocumented}"
    unknown = sorted(d for d in docs if not any(m == d[0] and matches(d[1], p) for m, p in routes))
    assert not unknown, f"docs/api.md documents routes that do not exist: {unknown}"
    assert (
        fleet.http.get("/api/openapi.json", headers={"authorization": "Bearer x"}).status_code
        == 401
    )
