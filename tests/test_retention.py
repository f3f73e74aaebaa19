"""Retention: old runs go with their lines and index rows; failures stay longer; audit stays."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from easytask.store.db import is_postgres
from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, db_execute, wait_until


def _run(server: ServerHandle, command: str) -> int:
    job = server.submit("ret1", command)
    server.wait_job(job["job"]["id"])
    return int(job["runs"][0]["id"])


def _age(server: ServerHandle, run_id: int, days: int) -> None:
    when = datetime.now(UTC) - timedelta(days=days)
    # SQLite keeps times as naive UTC text, PostgreSQL as timestamptz
    value: Any = when if is_postgres(server.db_url) else when.strftime("%Y-%m-%d %H:%M:%S.%f")
    db_execute(
        server.db_url,
        "UPDATE run SET created_at = :t, finished_at = :t WHERE id = :id",
        {"t": value, "id": run_id},
    )


def _left(server: ServerHandle, word: str) -> tuple[list[int], int, int]:
    url = server.db_url
    runs = [r[0] for r in db_execute(url, "SELECT id FROM run ORDER BY id")]
    pattern = {"p": f"%{word}%"}
    lines = db_execute(url, "SELECT count(*) FROM log_line WHERE text LIKE :p", pattern)[0][0]
    if is_postgres(url):  # the chunks the trigram index covers
        indexed = db_execute(url, "SELECT count(*) FROM log_chunk WHERE text ILIKE :p", pattern)
    else:
        indexed = db_execute(
            url, "SELECT count(*) FROM log_fts WHERE log_fts MATCH :w", {"w": word}
        )
        db_execute(url, "INSERT INTO log_fts(log_fts) VALUES ('integrity-check')")
    return runs, lines, indexed[0][0]


def test_prune_keeps_failures_longer_and_never_the_audit_log(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """prune --dry-run counts, prune deletes runs, lines and index rows past their retention."""
    server = start_server(None, "--retention", "90d", "--retention-failed", "365d")
    start_agent(server, "ret1")
    old_ok = _run(server, "echo oldsuccess; echo oldsuccess again")
    old_failed = _run(server, "echo failedkept; exit 1")
    ancient_failed = _run(server, "echo ancientfail; exit 2")
    fresh = _run(server, "echo freshrun")
    _age(server, old_ok, 100)
    _age(server, old_failed, 100)
    _age(server, ancient_failed, 400)
    audit_before = len(server.get("/api/audit", limit=5000)["events"])

    dry = server.cli("prune", "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr
    counts = json.loads(dry.stdout)
    assert (counts["runs"], counts["lines"], counts["jobs"]) == (2, 3, 2)
    assert _left(server, "oldsuccess")[1] == 2  # nothing deleted yet

    done = server.cli("prune")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("deleted 2 job(s), 2 run(s), 3 log line(s)")
    runs, lines, indexed = _left(server, "oldsuccess")
    assert runs == [old_failed, fresh]
    assert (lines, indexed) == (0, 0)
    assert _left(server, "ancientfail")[1:] == (0, 0)
    assert _left(server, "failedkept")[1:] == (1, 1)
    assert server.http.get(f"/api/runs/{old_ok}").status_code == 404
    events = server.get("/api/audit", limit=5000)["events"]
    assert len(events) == audit_before + 2  # prune.dry_run and prune; nothing removed
    assert events[0]["action"] == "prune" and events[0]["detail"]["runs"] == 2
    assert server.cli("audit", "verify").returncode == 0
    again = server.cli("prune")
    assert again.stdout.startswith("deleted 0 job(s), 0 run(s), 0 log line(s)")
    server.post("/api/users", {"name": "vic", "role": "operator", "password": "operator-pass"})
    token = server.post("/api/tokens", {"name": "t", "user": "vic"})["token"]
    resp = server.http.post("/api/prune", json={}, headers={"authorization": f"Bearer {token}"})
    assert resp.status_code == 403


def test_server_prunes_on_its_own(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """With a retention set, the server's periodic prune removes old runs and audits it."""
    server = start_server(None, "--retention", "30d", "--prune-interval", "1s")
    start_agent(server, "ret1")
    old = _run(server, "echo periodic")
    keep = _run(server, "echo stays")
    _age(server, old, 31)
    wait_until(lambda: _left(server, "periodic")[0] == [keep], timeout=30, what="periodic prune")
    assert _left(server, "periodic")[1:] == (0, 0)
    events = server.get("/api/audit", action="prune")["events"]
    assert events and events[0]["actor"] == "server" and events[0]["detail"]["runs"] == 1


def test_prune_removes_the_files_of_what_it_deleted_and_keeps_the_rest(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Uploads, fetched files and submitted playbook bundles in the state dir go with the runs
    and jobs that used them; files a remaining run or job refers to stay, however old."""
    server = start_server(None, "--retention", "30d")
    start_agent(server, "ret1")
    state = server.state_dir
    remote = tmp_path / "remote.txt"
    remote.write_text("fetch me\n")

    def done(job: dict[str, Any]) -> int:
        final = server.wait_job(job["job"]["id"])
        assert final["job"]["state"] == "success", final["runs"]
        return int(job["runs"][0]["id"])

    def upload(name: str) -> str:
        resp = server.http.post("/api/uploads", params={"name": name}, content=b"data\n")
        assert resp.status_code == 201, resp.text
        return str(resp.json()["upload"])

    def copy(upload_id: str, name: str) -> int:
        spec = {"name": name, "upload": upload_id, "dest": str(tmp_path / f"copied-{name}")}
        return done(server.post("/api/jobs", {"pattern": "ret1", "kind": "copy", "copy": spec}))

    def fetch() -> int:
        spec = {"path": str(remote)}
        return done(server.post("/api/jobs", {"pattern": "ret1", "kind": "fetch", "fetch": spec}))

    def play(word: str) -> tuple[int, Path]:
        text = f"name: {word}\nhosts: ret1\ntasks:\n  - name: t\n    shell: echo {word}\n"
        job = server.post("/api/playbooks/run", {"text": text, "name": f"{word}.yml"})
        run_id = done(job)
        spec = db_execute(
            server.db_url, "SELECT vars FROM job WHERE id = :i", {"i": job["job"]["id"]}
        )
        return run_id, Path(json.loads(spec[0][0])["playbook"]).parent

    old_upload, kept_upload, unused_old, unused_new = (upload(f"{n}.txt") for n in "abcd")
    old_copy, kept_copy = copy(old_upload, "a.txt"), copy(kept_upload, "b.txt")
    old_fetch, kept_fetch = fetch(), fetch()
    (old_play, old_bundle), (_, kept_bundle) = play("oldbook"), play("keptbook")
    for run_id in (old_copy, old_fetch, old_play):
        _age(server, run_id, 31)
    # every file is as old as the oldest run: what keeps one is a row that refers to it
    long_ago = time.time() - 31 * 86400
    files = {
        "old upload": state / "uploads" / old_upload,
        "kept upload": state / "uploads" / kept_upload,
        "unused old upload": state / "uploads" / unused_old,
        "old fetch": state / "fetched" / str(old_fetch),
        "kept fetch": state / "fetched" / str(kept_fetch),
        "old bundle": old_bundle,
        "kept bundle": kept_bundle,
    }
    for path in files.values():
        assert path.is_dir(), path
        os.utime(path, (long_ago, long_ago))
    assert server.http.get(f"/api/runs/{old_fetch}/fetched").status_code == 200

    dry = json.loads(server.cli("prune", "--dry-run", "--format", "json").stdout)
    assert dry["files"] == 1  # the unused upload; the others go with their runs
    assert all(p.exists() for p in files.values())

    result = server.cli("prune")
    assert result.stdout.startswith("deleted 3 job(s), 3 run(s)"), result.stdout
    assert ", 4 file(s)" in result.stdout, result.stdout
    left = {name for name, path in files.items() if path.exists()}
    assert left == {"kept upload", "kept fetch", "kept bundle"}
    assert (state / "uploads" / unused_new).is_dir()  # younger than the retention
    assert server.http.get(f"/api/runs/{kept_fetch}/fetched").status_code == 200
    # what stays still works: the kept upload copies again
    assert copy(kept_upload, "b.txt") > kept_copy
    event = server.get("/api/audit", action="prune")["events"][0]
    assert event["detail"]["files"] == 4
