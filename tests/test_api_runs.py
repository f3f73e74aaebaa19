"""GET /api/runs: the console's filters and keyset pages, against a real server and agents."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle

RUN_ROW = re.compile(r'<tr data-run="(\d+)">')


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """A server with agents web1, web2 and db1."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[web]\nweb1\nweb2\n\n[db]\ndb1\n")
    server = start_server(inventory)
    for name in ("web1", "web2", "db1"):
        start_agent(server, name)
    return server


def test_api_runs_has_the_console_filters_and_keyset_pages(fleet: ServerHandle) -> None:
    """User, output text, host wildcards, task or command, status, time and job filter the API
    as they filter the runs page; next_before/prev_after walk the pages."""
    add_user(fleet, "otto", "operator", "operator-pass-1")
    ok = fleet.wait_job(fleet.submit("web1", "echo needle-alpha; echo disk is full")["job"]["id"])
    bad = fleet.wait_job(fleet.submit("db1", "echo other output; exit 3")["job"]["id"])
    otto = Browserless(fleet)
    assert otto.login("otto", "operator-pass-1").status_code == 303
    resp = otto.api_post("/api/jobs", {"pattern": "web*", "command": "echo by-otto 100%"})
    assert resp.status_code == 201
    by_otto = fleet.wait_job(resp.json()["job"]["id"])
    otto.close()
    ok_id, bad_id = ok["runs"][0]["id"], bad["runs"][0]["id"]
    otto_ids = sorted((r["id"] for r in by_otto["runs"]), reverse=True)
    otto_on = {r["host"]: r["id"] for r in by_otto["runs"]}
    everything = [*otto_ids, bad_id, ok_id]

    def api(**params: Any) -> dict[str, Any]:
        resp = fleet.http.get("/api/runs", params=params)
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    def ids(**params: Any) -> list[int]:
        return [r["id"] for r in api(**params)["runs"]]

    assert ids() == everything
    first = api()["runs"][-1]
    assert first["id"] == ok_id and first["submitted_by"] == "admin"
    assert first["host"] == "web1" and first["state"] == "success"
    assert ids(user="otto") == otto_ids
    assert {r["submitted_by"] for r in api(user="otto")["runs"]} == {"otto"}
    assert ids(user="nobody") == []
    assert ids(q="needle-alpha") == [ok_id]
    assert ids(q="disk is full") == [ok_id]
    assert ids(q="full is disk") == []  # a phrase, in order
    assert ids(q="100") == otto_ids
    for hostile in ('"', "needle AND (", "NEAR(a b", "*", "-x", "a:b", "_", "'"):
        assert ids(q=hostile) == [], hostile
    # `%` is a literal, never a wildcard: at most the run that printed one is found (PostgreSQL
    # finds substrings; SQLite's full-text index leaves punctuation out)
    on_postgres = (fleet.db_url or "").startswith("postgresql")
    assert ids(q="%") == (otto_ids if on_postgres else [])
    assert ids(host="web1") == [otto_on["web1"], ok_id]
    assert ids(host="web*") == [*otto_ids, ok_id]
    assert ids(host="w?b2") == [otto_on["web2"]]
    assert ids(host="web%") == []  # % is not a wildcard
    assert ids(task="by-otto") == otto_ids  # the command matches too
    assert ids(status="failed") == [bad_id]
    assert ids(status="failed,success") == everything
    assert ids(status=["failed", "success"]) == everything
    assert ids(status="failed", host="db*", q="other output", user="admin") == [bad_id]
    assert ids(since="1h") == everything
    assert ids(until="1h") == []
    assert ids(since="2000-01-01T00:00", until="2999-01-01") == everything
    assert ids(job=by_otto["job"]["id"]) == otto_ids
    # the runs page applies the same filters, through the same code
    admin = Browserless(fleet)
    assert admin.login("admin", admin_password(fleet)).status_code == 303
    for params in ({"user": "otto"}, {"q": "disk is full"}, {"host": "web*", "status": "success"}):
        page = admin.http.get("/runs", params=params)
        assert [int(x) for x in RUN_ROW.findall(page.text)] == ids(**params), params
    admin.close()

    # keyset pages, newest first: follow next_before to the end, then prev_after back
    pages = [api(limit=1)]
    while pages[-1]["next_before"] is not None:
        pages.append(api(limit=1, before=pages[-1]["next_before"]))
    assert [r["id"] for p in pages for r in p["runs"]] == everything
    assert pages[0]["prev_after"] is None
    assert [p["prev_after"] for p in pages[1:]] == everything[1:]
    back = [api(limit=1, after=pages[-1]["runs"][0]["id"])]
    while back[-1]["prev_after"] is not None:
        back.append(api(limit=1, after=back[-1]["prev_after"]))
    assert [r["id"] for p in back for r in p["runs"]] == everything[-2::-1]
    assert [p["next_before"] for p in back] == everything[-2::-1]
    two = api(limit=2, host="web*")
    assert [r["id"] for r in two["runs"]] == otto_ids
    assert ids(limit=2, host="web*", before=two["next_before"]) == [ok_id]

    # bad input is a 400 with a message that says what is wrong
    for params, message in (
        ({"status": "bogus"}, "unknown status 'bogus'"),
        ({"since": "yesterday-ish"}, "not a time or duration"),
        ({"before": "abc"}, "before must be a run id"),
        ({"limit": "many"}, "limit must be a number"),
        ({"before": "5", "after": "2"}, "not both"),
    ):
        resp = fleet.http.get("/api/runs", params=params)
        assert resp.status_code == 400 and message in resp.json()["error"], params
