"""Health, readiness, Prometheus metrics and JSON logs of a real server and agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, wait_until


def _metrics(server: ServerHandle) -> dict[str, float]:
    resp = server.http.get("/metrics")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[str, float] = {}
    for line in resp.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_healthz_and_readyz_answer_without_a_token(start_server: ServerFactory) -> None:
    """/healthz and /readyz need no login; /readyz reports the database and agent listener."""
    server = start_server()
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")
    assert ready.json()["buffer"]["lines"] == 0


def test_metrics_need_a_token(start_server: ServerFactory, monkeypatch: Any) -> None:
    """/metrics takes an API token or the metrics token; the metrics token opens nothing else."""
    monkeypatch.setenv("EASYTASK_METRICS_TOKEN", "scrape-me-please")
    server = start_server()

    def status(path: str, token: str | None) -> int:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.get(server.url + path, headers=headers).status_code

    assert status("/metrics", None) == 401
    assert status("/metrics", "nope") == 401
    assert status("/metrics", "scrape-me-please") == 200
    assert status("/metrics", server.token) == 200
    assert status("/api/runs", "scrape-me-please") == 401


def test_metrics_move_after_a_real_run(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Agents, runs, queue depth, dispatch latency, ingested lines and job counts are exported."""
    server = start_server()
    before = _metrics(server)
    assert before['easytask_agents{state="online"}'] == 0
    assert before["easytask_dispatch_latency_seconds_count"] == 0
    assert before["easytask_queue_depth"] == 0
    start_agent(server, "m1")
    job = server.submit("m1", "for i in 1 2 3 4 5; do echo line $i; done")
    server.wait_job(job["job"]["id"])
    failed = server.submit("m1", "exit 3")
    server.wait_job(failed["job"]["id"])
    after = wait_until(
        lambda: (m := _metrics(server))["easytask_log_lines_ingested_total"] >= 5 and m,
        timeout=20,
        what="lines counted",
    )
    assert after['easytask_agents{state="online"}'] == 1
    assert after['easytask_runs{state="success"}'] == 1
    assert after['easytask_runs{state="failed"}'] == 1
    assert after["easytask_queue_depth"] == 0
    assert after["easytask_dispatch_latency_seconds_count"] == 2
    assert after['easytask_dispatch_latency_seconds_bucket{le="+Inf"}'] == 2
    assert 0 < after["easytask_dispatch_latency_seconds_sum"] < 60
    assert after['easytask_jobs_finished_total{state="success"}'] == 1
    assert after['easytask_jobs_finished_total{state="failed"}'] == 1
    assert after["easytask_sse_viewers"] == 0
    # buckets are cumulative
    buckets = [
        v for k, v in after.items() if k.startswith("easytask_dispatch_latency_seconds_bucket")
    ]
    assert buckets == sorted(buckets)


def test_sse_viewers_gauge_counts_open_streams(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """A client following a job's event stream shows in easytask_sse_viewers while it is open."""
    server = start_server()
    start_agent(server, "v1")
    job = server.submit("v1", "sleep 30")
    job_id = job["job"]["id"]
    with server.http.stream("GET", f"/api/jobs/{job_id}/events") as resp:
        assert resp.status_code == 200
        wait_until(lambda: _metrics(server)["easytask_sse_viewers"] >= 1, timeout=20, what="viewer")
    server.post(f"/api/jobs/{job_id}/kill")
    server.wait_job(job_id)
    wait_until(lambda: _metrics(server)["easytask_sse_viewers"] == 0, timeout=20, what="no viewer")


def test_json_logs_are_one_object_per_line(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """--log-format json makes the server and the agent log one JSON object per line."""
    server = start_server(None, "--log-format", "json")
    agent = start_agent(server, "j1", "--log-format", "json")
    job = server.submit("j1", "true")
    server.wait_job(job["job"]["id"])

    def records(text: str) -> list[dict[str, object]]:
        lines = [ln for ln in text.splitlines() if ln.startswith("{")]
        return [json.loads(ln) for ln in lines]

    finished = wait_until(
        lambda: [r for r in records(server.proc.output()) if r.get("job") == job["job"]["id"]],
        timeout=20,
        what="job finish logged",
    )
    assert finished[0]["state"] == "success"
    for rec in records(server.proc.output()):
        assert {"ts", "level", "logger", "msg"} <= set(rec)
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", str(rec["ts"]))
    # the server's own lines are all JSON (the ready banner goes to stdout, not the log)
    noise = [
        ln
        for ln in server.proc.output().splitlines()
        if ln and not ln.startswith("{") and not ln.startswith("easytask server ready")
    ]
    assert noise == []
    connected = [r for r in records(agent.output()) if r["msg"].startswith("connected to")]
    assert connected and connected[0]["agent"] == "j1"
    assert connected[0]["logger"] == "easytask.agent"


def test_agent_without_server_or_name_is_a_usage_error(tmp_path: Path) -> None:
    """`easytask agent` names the missing flag and its variable, and exits 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EASYTASK_AGENT_")}
    base = [sys.executable, "-m", "easytask", "agent"]
    missing = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert "--server is required (or set EASYTASK_AGENT_SERVER)" in missing.stderr
    env["EASYTASK_AGENT_SERVER"] = "127.0.0.1:1"
    env["EASYTASK_AGENT_STATE_DIR"] = str(tmp_path / "a")
    no_name = subprocess.run(base, env=env, capture_output=True, text=True, timeout=60)
    assert no_name.returncode == 2
    assert "--name is required (or set EASYTASK_AGENT_NAME)" in no_name.stderr
    assert not (tmp_path / "a").exists()
