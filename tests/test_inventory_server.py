"""A server whose inventory is a script: jobs see what the script prints now, after the cache time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ServerFactory, write
from tests.support import wait_until


def planned_hosts(server: Any, pattern: str) -> list[str]:
    resp = server.http.post(
        "/api/jobs", json={"pattern": pattern, "command": "true", "pending_timeout": 1}
    )
    resp.raise_for_status()
    return [run["host"] for run in resp.json()["runs"]]


def test_jobs_see_hosts_the_script_adds_after_the_cache_time(
    tmp_path: Path, start_server: ServerFactory
) -> None:
    """The script is run again once its output is older than --inventory-cache: a host it adds
    between two jobs is in the second; a failing script fails the job with its stderr; a second
    -i is used too."""
    listing = tmp_path / "listing.json"
    listing.write_text(json.dumps({"web": ["web1"], "_meta": {"hostvars": {}}}))
    script = write(tmp_path / "inv" / "cloud.sh", f"#!/bin/sh\ncat {listing}\n")
    script.chmod(0o755)
    static = write(tmp_path / "static.ini", "[db]\ndb1\n")
    server = start_server(script, "-i", str(static), "--inventory-cache", "1s")

    assert planned_hosts(server, "web:db") == ["web1", "db1"]
    listing.write_text(json.dumps({"web": ["web1", "web2"], "_meta": {"hostvars": {}}}))
    wait_until(
        lambda: planned_hosts(server, "web") == ["web1", "web2"],
        timeout=30,
        interval=0.5,
        what="a job to see the host the script added",
    )

    script.write_text("#!/bin/sh\necho 'cloud API: token expired' >&2\nexit 3\n")
    resp = server.http.post("/api/jobs", json={"pattern": "web", "command": "true"})
    assert resp.status_code == 400
    assert resp.json()["error"] == (
        f"inventory script {script} --list exited with code 3; its standard error:\n"
        "cloud API: token expired"
    )
