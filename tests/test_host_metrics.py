"""Host samples from real agents: stored once each, read back as columns, kept across a link drop,
rolled up, pruned, shown to Prometheus, and read only within a user's scope (a real server)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from easytask.hostsample import FIELDS
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, db_execute, free_port, wait_until

FAST = ("--metrics-interval", "1", "--metrics-active-interval", "1")
KEYS = ["agent", "cpus", "t", *FIELDS]


def stored(server: ServerHandle, agent: str) -> list[float]:
    """The times of an agent's raw samples in the database, in order."""
    rows = db_execute(
        server.db_url, "SELECT t FROM hostmetric WHERE agent = :a ORDER BY t", {"a": agent}
    )
    return [float(r[0]) for r in rows]


def test_samples_arrive_and_read_back_as_columns(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """An agent's samples are stored and come back from the API as one list per field, and
    /metrics shows its newest one as gauges labelled by the agent."""
    server = start_server()
    start_agent(server, "mx1", *FAST)
    wait_until(lambda: len(stored(server, "mx1")) >= 3, timeout=30, what="three samples stored")
    data = server.get("/api/agents/mx1/metrics")
    assert set(KEYS) <= set(data)
    assert data["agent"] == "mx1" and data["resolution"] == "raw"
    assert isinstance(data["cpus"], int) and data["cpus"] >= 1
    n = len(data["t"])
    assert n >= 3 and all(len(data[f]) == n for f in FIELDS)
    assert data["t"] == sorted(data["t"])
    assert all(0 <= v <= 100 for v in data["cpu"])
    assert all(v > 0 for v in data["mem_available"]) and all(v > 0 for v in data["procs"])
    assert all(0 < v <= 100 for v in data["disk_root_pct"])
    # a range given in ISO 8601 that holds no sample gives empty columns
    old = server.get(
        "/api/agents/mx1/metrics", since="2001-01-01T00:00:00Z", until="2001-01-01T01:00:00Z"
    )
    assert old["t"] == [] and old["cpu"] == []
    # a range from after the newest sample into the future holds no sample from before it
    last = data["t"][-1] + 0.001
    later = server.get("/api/agents/mx1/metrics", since=last, until=last + 600)
    assert all(t >= last for t in later["t"]), (last, later["t"])
    text = server.http.get("/metrics").text
    assert 'easytask_agent_cpu_percent{agent="mx1"}' in text
    assert 'easytask_agent_memory_available_bytes{agent="mx1"}' in text
    assert "# TYPE easytask_agent_load1 gauge" in text


def test_bad_requests_are_refused_with_the_reason(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """A time that is no time, a range backwards, an unknown resolution: 400 naming it; an
    unknown agent: 404."""
    server = start_server()
    start_agent(server, "mx2", "--metrics-interval", "0")
    bad = {
        "since=yesterday": "since",
        "until=12:61": "until",
        "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z": "since",
        "resolution=hourly": "resolution",
    }
    for query, name in bad.items():
        resp = server.http.get(f"/api/agents/mx2/metrics?{query}")
        assert resp.status_code == 400, query
        assert resp.json()["error"].startswith(f"{name}:"), resp.json()
    resp = server.http.get("/api/agents/nobody/metrics")
    assert resp.status_code == 404 and "nobody" in resp.json()["error"]
    # an agent that samples nothing has nothing stored, and says so by empty columns
    assert server.get("/api/agents/mx2/metrics")["t"] == []
    # the agents page's batch: a bad span is refused naming it; an empty agent has empty lists
    for minutes in ("0", "1441", "an hour", "1.5"):
        resp = server.http.get(f"/api/agents/metrics/recent?minutes={minutes}")
        assert resp.status_code == 400, minutes
        assert resp.json()["error"].startswith("minutes:"), resp.json()
    recent = server.get("/api/agents/metrics/recent")
    assert recent["minutes"] == 60
    assert recent["agents"] == {"mx2": {"t": [], "cpu": []}}


@pytest.mark.chaos
def test_samples_taken_while_the_link_is_down_arrive_once(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Server killed, agent sampling on; restarted: the samples of the gap arrive, each once."""
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(agents=agents_addr)
    start_agent(server, "mx3", *FAST)
    wait_until(lambda: len(stored(server, "mx3")) >= 2, timeout=30, what="samples stored")
    server.proc.kill9()
    down = time.time()
    time.sleep(4)  # the agent samples on meanwhile: four samples nobody can take yet
    server2 = start_server(state_dir=server.state_dir, agents=agents_addr)
    up = time.time()
    wait_until(lambda: server2.agent_status("mx3") == "online", timeout=30, what="back online")
    wait_until(
        lambda: any(t > up + 1 for t in stored(server2, "mx3")),
        timeout=30,
        what="a sample after the restart",
    )
    times = stored(server2, "mx3")
    gap = [t for t in times if down < t < up]
    assert len(gap) >= 3, (down, up, times)
    # one row per time, and no hole longer than a couple of intervals across the outage
    (dupes,) = db_execute(
        server2.db_url,
        "SELECT count(*) - count(DISTINCT t) FROM hostmetric WHERE agent = 'mx3'",
    )
    assert dupes[0] == 0
    steps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert max(steps) < 2.5, steps


def test_old_samples_roll_up_into_minutes_and_prune_with_retention(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Past the raw retention, samples become one row per minute (read back as minutes); the
    run retention prunes those minutes."""
    server = start_server(None, "--metrics-raw-retention", "2s")
    start_agent(server, "mx4", *FAST)

    def rolled() -> int:
        rows = db_execute(server.db_url, "SELECT sum(n) FROM hostmetric_rollup WHERE agent = 'mx4'")
        return int(rows[0][0] or 0)

    wait_until(lambda: rolled() >= 3, timeout=40, what="samples rolled up")
    assert min(stored(server, "mx4") or [time.time()]) > time.time() - 10
    minutes = server.get("/api/agents/mx4/metrics", resolution="minute")
    assert minutes["resolution"] == "minute" and minutes["t"]
    assert all(t % 60 == 0 for t in minutes["t"])
    assert all(0 <= v <= 100 for v in minutes["cpu"] if v is not None)

    # the agents page's batch reads the same minutes, then the newest raw sample
    def recent_cpu() -> dict[str, list[float]] | None:
        found = server.get("/api/agents/metrics/recent", minutes=60)["agents"]["mx4"]
        return found if found["t"] and found["t"][-1] % 60 != 0 else None

    recent = wait_until(recent_cpu, timeout=20, what="the newest raw sample in the batch")
    assert recent["t"][-1] > time.time() - 10
    assert all(t % 60 == 0 for t in recent["t"][:-1]) and recent["t"] == sorted(recent["t"])
    settled = {  # minutes no sample can join any more
        t: v for t, v in zip(minutes["t"], minutes["cpu"], strict=True) if t + 75 < time.time()
    }
    by_minute = dict(zip(recent["t"][:-1], recent["cpu"][:-1], strict=True))
    for t, v in settled.items():
        assert by_minute[t] == pytest.approx(v), (t, by_minute, settled)
    dry = server.post("/api/prune", {"dry_run": True, "retention": "1s"})
    assert dry["metric_minutes"] >= 1
    done = server.post("/api/prune", {"retention": "1s"})
    assert done["metric_minutes"] >= 1
    this_minute = time.time() // 60 * 60
    left = db_execute(
        server.db_url,
        "SELECT count(*) FROM hostmetric_rollup WHERE t < :m",
        {"m": this_minute - 60},
    )
    assert left[0][0] == 0


def test_a_scoped_user_reads_only_agents_in_scope(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A user whose scope leaves an agent out gets 403 for its samples; one in scope reads them."""
    inventory = write(
        tmp_path / "hosts.ini", "[web]\nmxweb\n[db]\nmxdb\n[all:vars]\neasytask_connection=agent\n"
    )
    server = start_server(inventory)
    start_agent(server, "mxweb", *FAST)
    start_agent(server, "mxdb", *FAST)
    server.post(
        "/api/users",
        {"name": "otto", "role": "viewer", "password": "viewer-pass-123", "scope": "web"},
    )
    token = server.post("/api/tokens", {"name": "t", "user": "otto"})["token"]
    otto = httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {token}"})
    wait_until(lambda: stored(server, "mxweb"), timeout=30, what="samples stored")
    ok = otto.get("/api/agents/mxweb/metrics")
    assert ok.status_code == 200 and ok.json()["agent"] == "mxweb"
    refused = otto.get("/api/agents/mxdb/metrics")
    assert refused.status_code == 404  # as an agent that does not exist: the name tells nothing
    assert refused.json()["error"] == "no agent 'mxdb'"
    # the agents page's batch leaves the agent outside the scope out; an admin sees both
    wait_until(lambda: stored(server, "mxdb"), timeout=30, what="mxdb's samples stored")
    recent = otto.get("/api/agents/metrics/recent")
    assert recent.status_code == 200 and list(recent.json()["agents"]) == ["mxweb"]
    assert recent.json()["agents"]["mxweb"]["t"]
    both = server.get("/api/agents/metrics/recent")["agents"]
    assert sorted(both) == ["mxdb", "mxweb"] and all(both[a]["cpu"] for a in both)
    otto.close()


def test_iso_times_name_the_range_read(start_server: ServerFactory) -> None:
    """`since` and `until` in ISO 8601 or epoch seconds come back as the range read, in UTC."""
    server = start_server()
    db_execute(
        server.db_url,
        "INSERT INTO agent (name, fingerprint, public_key, state, groups, approved_groups, "
        "slots, version, facts, address, server, connected, created_at) VALUES ('mx5', 'x', "
        "'', 'accepted', '', '', 4, '', '{\"cpus\": 3}', '', '', false, :now)",
        {"now": datetime.now(UTC)},
    )
    data = server.get(
        "/api/agents/mx5/metrics", since="1700000000", until="2023-11-14T23:13:20+01:00"
    )
    assert data["since"] == "2023-11-14T22:13:20+00:00"
    assert data["until"] == "2023-11-14T22:13:20+00:00"
    assert data["cpus"] == 3


def test_an_active_run_speeds_sampling_up(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Idle at one sample a minute, an agent samples every second while a run is active, from
    the run's start on."""
    server = start_server()
    start_agent(server, "mx6", "--metrics-interval", "60", "--metrics-active-interval", "1")
    job = server.submit("mx6", "sleep 4")
    data = server.wait_job(job["job"]["id"], timeout=60)
    run = data["runs"][0]
    assert run["state"] == "success"
    started = datetime.fromisoformat(run["started_at"]).timestamp()
    finished = datetime.fromisoformat(run["finished_at"]).timestamp()

    def during() -> list[float]:
        return [t for t in stored(server, "mx6") if started <= t <= finished]

    wait_until(lambda: len(during()) >= 3, timeout=30, what="samples a second apart during the run")
