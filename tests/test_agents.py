"""Agents over reverse SSH: enrolment, pinning, refusals, liveness."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import AgentFactory, ServerFactory
from tests.support import children_of, cmdline, wait_until


def test_agent_enrolled_by_token_comes_online(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """An agent with a valid enrolment token is accepted, online, and reports its facts."""
    server = start_server()
    start_agent(server, "alpha", "--group", "web", "--slots", "3")
    (agent,) = server.get("/api/agents")["agents"]
    assert agent["name"] == "alpha"
    assert agent["state"] == "accepted"
    assert agent["status"] == "online"
    assert agent["labels"] == ["web"]  # reported, not approved: in no group yet
    assert (agent["groups"], agent["pending"], agent["approved"]) == ([], ["web"], [])
    assert agent["slots"] == 3
    assert agent["fingerprint"].startswith("SHA256:")
    assert agent["facts"]["cpus"] >= 1
    assert set(agent["facts"]) >= {"hostname", "os", "cpus", "load", "version"}
    # agent links prefer AES-GCM (cheaper per packet than chacha20-poly1305 in asyncssh)
    assert "agent alpha online from 127.0.0.1 (aes256-gcm@openssh.com)" in server.proc.output()
    token = server.cli("agents", "token", "--format", "json")
    assert token.returncode == 0, token.stderr
    assert json.loads(token.stdout)["token"]


def test_agent_without_token_waits_pending_until_accepted(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Without a token an agent is pending and gets no work; `agents accept` lets it in."""
    server = start_server()
    start_agent(server, "beta", enroll=False, wait=False)
    wait_until(lambda: server.agent_status("beta") == "pending", what="pending agent")
    result = server.cli("run", "beta", "-a", "true", "--pending-timeout", "1")
    assert result.returncode == 2, result.stderr
    assert "beta not accepted (pending or revoked)" in result.stderr
    accepted = server.cli("agents", "accept", "beta")
    assert accepted.returncode == 0, accepted.stderr
    assert "beta: accepted" in accepted.stdout
    wait_until(
        lambda: server.agent_status("beta") == "online", timeout=40, what="accepted agent online"
    )
    result = server.cli("run", "beta", "-a", "echo hi")
    assert result.returncode == 0, result.stderr
    assert "beta | hi" in result.stdout


def test_second_agent_with_same_name_and_other_key_is_refused(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A name is bound to its first key: another key claiming it is refused, even with a token."""
    server = start_server()
    start_agent(server, "gamma")
    original = server.get("/api/agents")["agents"][0]["fingerprint"]
    start_agent(server, "gamma", state_dir=tmp_path / "forged", wait=False)
    wait_until(
        lambda: any(r["name"] == "gamma" for r in server.get("/api/agents")["refused"]),
        what="refusal recorded",
    )
    (agent,) = server.get("/api/agents")["agents"]
    assert agent["fingerprint"] == original
    assert agent["status"] == "online"
    refused = [r for r in server.get("/api/agents")["refused"] if r["name"] == "gamma"]
    assert "held by another key" in refused[0]["reason"]


def test_unknown_key_without_token_never_gets_work(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """An agent with a forged token is refused (no pending request is made for it); a run for
    its inventory host never reaches it."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[web]\ndelta\n")
    server = start_server(inventory)
    start_agent(server, "delta", "--enroll", "et_enroll_forged", enroll=False, wait=False)
    refused = wait_until(
        lambda: [r for r in server.get("/api/agents")["refused"] if r["name"] == "delta"],
        what="refusal",
    )
    assert refused[0]["reason"] == "the enrolment token is unknown, spent or expired"
    assert server.agent_status("delta") is None
    marker = tmp_path / "should-not-exist"
    job = server.submit("delta", f"touch {marker}", pending_timeout=2)
    data = server.wait_job(job["job"]["id"])
    assert data["runs"][0]["state"] == "unreachable"
    assert not marker.exists()


def test_killed_agent_becomes_unreachable_and_run_is_not_success(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """kill -9 of an agent mid-run: unreachable within the keepalive window; the run is not success."""
    server = start_server()
    agent = start_agent(server, "eps")
    job = server.submit("eps", "echo started; sleep 30")
    run_id = job["runs"][0]["id"]
    wait_until(
        lambda: server.get(f"/api/runs/{run_id}")["run"]["state"] == "running", what="running"
    )
    wait_until(lambda: server.log_lines(run_id), what="first line")
    started = time.monotonic()
    agent.kill9()
    wait_until(lambda: server.agent_status("eps") == "unreachable", timeout=10, what="unreachable")
    assert time.monotonic() - started < 5
    wait_until(
        lambda: "agent lost" in [e["kind"] for e in server.get(f"/api/runs/{run_id}")["events"]],
        what="the run's agent lost",
    )
    run = server.get(f"/api/runs/{run_id}")["run"]
    assert run["state"] == "running"  # waiting to re-attach, never reported as success
    server.post(f"/api/jobs/{job['job']['id']}/kill")


def test_agents_listing_in_text_and_json(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """`easytask agents` lists name, status and since-when; --format json gives the same data."""
    import json

    server = start_server()
    start_agent(server, "zeta")
    text = server.cli("agents")
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines()[0].split()[:3] == ["NAME", "STATUS", "SINCE"]
    assert "zeta" in text.stdout and "online" in text.stdout
    js = server.cli("agents", "--format", "json")
    assert json.loads(js.stdout)[0]["status"] == "online"


def test_run_one_picks_least_busy_and_slots_are_respected(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """--one runs on the agent with the most free slots; an agent never runs more than its
    slots at once."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[pool]\nslot1\nslot2\n")
    server = start_server(inventory)
    start_agent(server, "slot1", "--slots", "1")
    start_agent(server, "slot2", "--slots", "2")
    busy = server.submit("slot2", "sleep 15")
    wait_until(
        lambda: server.get(f"/api/jobs/{busy['job']['id']}")["runs"][0]["state"] == "running",
        what="slot2 busy",
    )
    # slot2 has 1 free slot of 2, slot1 1 of 1: equal, so fill slot2
    fuller = server.submit("slot2", "sleep 15")
    wait_until(
        lambda: server.get(f"/api/jobs/{fuller['job']['id']}")["runs"][0]["state"] == "running",
        what="slot2 full",
    )
    one = server.cli("run", "pool", "--one", "-a", "echo on $EASYTASK_RUN_ID")
    assert one.returncode == 0, one.stderr
    assert "slot1 | on" in one.stdout and "slot2" not in one.stdout.split("HOST")[0]
    # slot1 has one slot: two runs for it go one after the other
    job = server.submit("slot1,slot1", "sleep 1")  # the pattern names it twice: one run
    assert len(job["runs"]) == 1
    jobs = [server.submit("slot1", "sleep 1") for _ in range(2)]
    datas = [server.wait_job(j["job"]["id"]) for j in jobs]
    spans = sorted((d["runs"][0]["started_at"], d["runs"][0]["finished_at"]) for d in datas)
    assert spans[0][1] <= spans[1][0]  # no overlap
    server.post(f"/api/jobs/{busy['job']['id']}/kill")
    server.post(f"/api/jobs/{fuller['job']['id']}/kill")


def _supervisors_of(pid: int) -> list[int]:
    """Child processes of `pid` that are agent supervisors."""
    return [child for child in children_of(pid) if "easytask.agent.supervisor" in cmdline(child)]


def _exited(pid: int) -> bool:
    """The process is gone or a zombie waiting for its parent."""
    try:
        return b"zombie" in Path(f"/proc/{pid}/status").read_bytes()
    except OSError:
        return True


def test_idle_supervisor_exits_and_the_next_run_starts_a_new_one(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """No supervisor before the first run; it exits after --supervisor-idle without runs (an
    idle agent is one process), never while a run is going, and the next run starts another."""
    server = start_server()
    agent = start_agent(server, "lean", "--supervisor-idle", "2s")
    assert _supervisors_of(agent.pid) == []
    job = server.submit("lean", "sleep 4; echo slow-done")
    (first,) = wait_until(lambda: _supervisors_of(agent.pid), timeout=20, what="supervisor")
    assert server.wait_job(job["job"]["id"])["job"]["state"] == "success"
    # the 4 s run outlived the 2 s idle time: the supervisor was kept while it ran
    assert [ln["text"] for ln in server.log_lines(job["runs"][0]["id"])] == ["slow-done"]
    # gone (or a zombie) is the fact; a process on its way out already has an empty cmdline
    wait_until(lambda: _exited(first), timeout=20, what="idle supervisor exit")
    assert _supervisors_of(agent.pid) == []
    again = server.submit("lean", "echo again")
    assert server.wait_job(again["job"]["id"])["job"]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(again["runs"][0]["id"])] == ["again"]
    (second,) = _supervisors_of(agent.pid)
    assert second != first
