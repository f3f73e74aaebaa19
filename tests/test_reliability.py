"""Chaos: agents and servers killed mid-run, links cut; no line lost or stored twice."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from easytask.agent.spool import spool_keys
from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, free_port, wait_until

pytestmark = pytest.mark.chaos

N = 300
NUMBERED = f'for i in $(seq 1 {N}); do echo "line $i"; echo "err $i" >&2; sleep 0.01; done; exit 7'


def assert_complete(server: ServerHandle, run_id: int, n: int = N) -> dict[str, Any]:
    """Every line 1..n of both streams stored once, in order, seq 1..m without gaps."""
    run = server.get(f"/api/runs/{run_id}")["run"]
    lines = server.log_lines(run_id)
    assert [ln["seq"] for ln in lines] == list(range(1, len(lines) + 1))
    out = [ln["text"] for ln in lines if ln["stream"] == "stdout"]
    err = [ln["text"] for ln in lines if ln["stream"] == "stderr"]
    assert out == [f"line {i}" for i in range(1, n + 1)]
    assert err == [f"err {i}" for i in range(1, n + 1)]
    assert run["out_lines"] == 2 * n
    return run


def test_agent_killed_and_restarted_mid_run(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 of the agent mid-run, agent restarted: the job went on; all lines; exit status right."""
    server = start_server()
    agent = start_agent(server, "chaos1")
    job = server.submit("chaos1", NUMBERED)
    run_id = job["runs"][0]["id"]
    wait_until(lambda: len(server.log_lines(run_id)) > 20, what="some output")
    agent.kill9()
    wait_until(
        lambda: server.agent_status("chaos1") == "unreachable", timeout=10, what="unreachable"
    )
    time.sleep(1)  # the command keeps printing into the spool meanwhile
    start_agent(server, "chaos1", enroll=False, state_dir=tmp_path / "agents" / "chaos1")
    data = server.wait_job(job["job"]["id"], timeout=60)
    run = data["runs"][0]
    assert (run["state"], run["exit_code"]) == ("failed", 7)
    assert_complete(server, run_id)
    kinds = [e["kind"] for e in server.get(f"/api/runs/{run_id}")["events"]]
    assert "agent lost" in kinds and "reattached" in kinds
    # the spool was deleted after the server acknowledged it
    wait_until(
        lambda: not spool_keys(tmp_path / "agents" / "chaos1" / "spool")[0], what="spool acked"
    )


def test_server_killed_and_restarted_mid_run(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 of the server mid-run, restarted on the same state: re-attached, nothing lost."""
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(agents=agents_addr)
    start_agent(server, "chaos2")
    job = server.submit("chaos2", NUMBERED)
    run_id = job["runs"][0]["id"]
    wait_until(lambda: len(server.log_lines(run_id)) > 20, what="some output")
    server.proc.kill9()
    time.sleep(1)
    server2 = start_server(state_dir=server.state_dir, agents=agents_addr)
    data = server2.wait_job(job["job"]["id"], timeout=60)
    run = data["runs"][0]
    assert (run["state"], run["exit_code"]) == ("failed", 7)
    assert_complete(server2, run_id)
    kinds = [e["kind"] for e in server2.get(f"/api/runs/{run_id}")["events"]]
    assert "resumed" in kinds and "reattached" in kinds


def test_queued_runs_survive_server_kill(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Runs queued for an absent agent survive kill -9 of the server and run once afterwards."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[web]\nlater1\n[web:vars]\neasytask_connection=agent\n")
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(inventory, agents=agents_addr)
    marker = tmp_path / "ran"
    job = server.submit("later1", f"echo x >> {marker}; echo done", pending_timeout=120)
    server.proc.kill9()
    server2 = start_server(inventory, state_dir=server.state_dir, agents=agents_addr)
    start_agent(server2, "later1")
    data = server2.wait_job(job["job"]["id"], timeout=60)
    assert data["runs"][0]["state"] == "success"
    assert marker.read_text() == "x\n"


def test_agentless_run_fails_when_server_dies(
    start_server: ServerFactory, sshd, tmp_path: Path
) -> None:
    """A run on an agentless host in flight when the server dies ends failed: connection lost."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text(f"[plain]\nplainx {sshd.host_vars()}\n")
    server = start_server(inventory)
    job = server.submit("plainx", "echo hi; sleep 5")
    run_id = job["runs"][0]["id"]
    wait_until(lambda: server.log_lines(run_id), what="first line")
    server.proc.kill9()
    server2 = start_server(inventory, state_dir=server.state_dir)
    # the new process settles runs it finds in flight as it starts (on PostgreSQL, possibly
    # just after it answers): wait for the run to end, then check how
    run = wait_until(
        lambda: (r := server2.get(f"/api/runs/{run_id}")["run"])["state"] != "running" and r,
        timeout=30,
        what="the run left in flight to end",
    )
    assert run["state"] == "failed"
    assert run["reason"] == "connection lost (server restarted)"


def test_stored_output_limit_keeps_head_and_tail(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Past --output-limit a run keeps the head and the tail and says what was cut."""
    server = start_server(None, "--output-limit", "64k")
    start_agent(server, "big1")
    job = server.submit("big1", "for i in $(seq 1 10000); do printf 'line %014d\\n' $i; done")
    data = server.wait_job(job["job"]["id"], timeout=60)
    run = data["runs"][0]
    assert run["state"] == "success" and run["truncated"]
    lines = server.log_lines(run["id"])
    assert [ln["seq"] for ln in lines] == list(range(1, len(lines) + 1))
    texts = [ln["text"] for ln in lines]
    assert texts[0] == "line 00000000000001"
    assert texts[-1] == "line 00000000010000"
    (marker,) = [ln for ln in lines if ln["stream"] == "system"]
    numbers = [int(t.split()[1]) for t in texts if t.startswith("line ")]
    head = [n for n in numbers if n < numbers[-1] - 1000]
    assert head == list(range(1, len(head) + 1))  # the head is contiguous from line 1
    tail = numbers[len(head) :]
    assert tail == list(range(tail[0], 10001))  # and so is the tail, up to the last line
    dropped = 10000 - len(numbers)
    assert f"output cut: {dropped} lines ({dropped * 20} bytes) dropped" in marker["text"]
    full = server.get(f"/api/runs/{run['id']}")["run"]
    assert full["truncated"] is True


def test_agent_spool_cap_cuts_cleanly_and_says_so(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Past the agent's --spool-cap the run keeps the first lines and records what was cut."""
    server = start_server(None)
    start_agent(server, "capped1", "--spool-cap", "10k")
    job = server.submit("capped1", "for i in $(seq 1 2000); do printf 'line %014d\\n' $i; done")
    data = server.wait_job(job["job"]["id"], timeout=60)
    run = server.get(f"/api/runs/{data['runs'][0]['id']}")["run"]
    assert run["state"] == "success" and run["exit_code"] == 0
    lines = server.log_lines(run["id"])
    assert [ln["seq"] for ln in lines] == list(range(1, len(lines) + 1))
    kept = [ln["text"] for ln in lines if ln["stream"] == "stdout"]
    assert kept == [f"line {i:014d}" for i in range(1, 10240 // 20 + 1)]  # 20 bytes a line
    dropped = 2000 - len(kept)
    assert run["truncated"] is True
    assert (run["dropped_lines"], run["dropped_bytes"]) == (dropped, dropped * 20)
    assert run["out_bytes"] == 2000 * 20  # what the command printed, cut or not
    (marker,) = [ln for ln in lines if ln["stream"] == "system"]
    assert f"{dropped} lines ({dropped * 20} bytes) were not kept" in marker["text"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_one_gigabyte_of_output_keeps_server_memory_bounded(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """1 GB printed by one task: the server's peak RSS stays under 300 MB."""
    server = start_server(None, "--output-limit", "32M")
    start_agent(server, "huge1", "--spool-cap", "2G")
    job = server.submit("huge1", "yes \"$(printf '%0999d' 0)\" | head -c 1073741824")
    data = server.wait_job(job["job"]["id"], timeout=600)
    run = data["runs"][0]
    assert run["state"] == "success"
    assert run["out_bytes"] == 1 << 30
    assert run["truncated"]
    status = Path(f"/proc/{server.proc.pid}/status").read_text()
    peak_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1])
    print(f"server peak RSS after 1 GB of output: {peak_kb / 1024:.0f} MiB")
    assert peak_kb < 300 * 1024


@pytest.fixture
def netns(tmp_path: Path):
    """A network namespace joined to this one by a veth pair: 10.213.N.1 here, .2 inside."""
    import os
    import subprocess

    tag = f"{os.getpid() % 200 + 20}"
    ns, host_if, ns_if = f"et{tag}", f"eth{tag}", f"etn{tag}"
    host_ip, ns_ip = f"10.213.{tag}.1", f"10.213.{tag}.2"

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "link", "set", "lo", "up")
        yield {"ns": ns, "host_if": host_if, "host_ip": host_ip, "ip": ip}
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_network_partition_then_heal(
    start_server: ServerFactory, netns, tmp_path: Path, procs: list
) -> None:
    """Link down longer than the keepalive window: unreachable meanwhile; then re-attached, all lines."""
    import sys

    from tests.support import Proc

    port = free_port()
    server = start_server(agents=f"{netns['host_ip']}:{port}")
    token = server.post("/api/agents/tokens", {"uses": 1})["token"]
    state = tmp_path / "agents" / "part1"
    state.mkdir(parents=True)
    agent = Proc(
        [
            "ip",
            "netns",
            "exec",
            netns["ns"],
            sys.executable,
            "-m",
            "easytask",
            "agent",
            "--server",
            f"{netns['host_ip']}:{port}",
            "--name",
            "part1",
            "--state-dir",
            str(state),
            "--keepalive",
            "1",
            "--keepalive-count",
            "3",
            "--backoff-max",
            "1",
            "--enroll",
            token,
        ],
        state / "agent.log",
    )
    procs.append(agent)
    wait_until(lambda: server.agent_status("part1") == "online", timeout=40, what="agent online")
    n = 600
    job = server.submit(
        "part1",
        f'for i in $(seq 1 {n}); do echo "line $i"; echo "err $i" >&2; sleep 0.02; done; exit 7',
    )
    run_id = job["runs"][0]["id"]
    wait_until(lambda: len(server.log_lines(run_id)) > 20, what="some output")
    netns["ip"]("link", "set", netns["host_if"], "down")
    cut = time.monotonic()
    wait_until(
        lambda: server.agent_status("part1") == "unreachable", timeout=15, what="unreachable"
    )
    detected = time.monotonic() - cut
    time.sleep(max(0.0, 6 - detected))
    netns["ip"]("link", "set", netns["host_if"], "up")
    healed = time.monotonic()
    wait_until(lambda: server.agent_status("part1") == "online", timeout=30, what="back online")
    back = time.monotonic() - healed
    data = server.wait_job(job["job"]["id"], timeout=60)
    run = data["runs"][0]
    assert (run["state"], run["exit_code"]) == ("failed", 7)
    assert_complete(server, run_id, n)
    print(
        f"partition: unreachable after {detected:.1f}s, back online {back:.1f}s after the link came up"
    )


RESUME_BOOK = """\
name: resume
hosts: pbweb
serial: 1
tasks:
  - name: count
    shell: >-
      echo x >> {marks}/count-{{{{ inventory_hostname }}}};
      for i in $(seq 1 40); do echo $i; sleep 0.1; done
  - name: report
    needs: count
    shell: >-
      echo x >> {marks}/report-{{{{ inventory_hostname }}}};
      echo "count said {{{{ results.count.stdout_lines | length }}}} lines"
  - name: flaky
    needs: report
    retries: 1
    retry_delay: 1s
    shell: >-
      echo x >> {marks}/flaky-{{{{ inventory_hostname }}}};
      [ $(wc -l < {marks}/flaky-{{{{ inventory_hostname }}}}) -ge 2 ]
  - name: never
    when: inventory_hostname == "nobody"
    shell: echo x >> {marks}/never
"""


def test_playbook_job_continues_after_server_kill(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 of the server mid-task of a playbook: the restarted server finishes the job, once."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[pbweb]\npb1\npb2\n[pbweb:vars]\neasytask_connection=agent\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(inventory, agents=agents_addr)
    start_agent(server, "pb1")
    start_agent(server, "pb2")
    job = server.post(
        "/api/playbooks/run", {"name": "resume.yml", "text": RESUME_BOOK.format(marks=marks)}
    )
    job_id = job["job"]["id"]
    first = next(r for r in job["runs"] if (r["task"], r["host"]) == ("count", "pb1"))
    wait_until(lambda: len(server.log_lines(first["id"])) > 10, timeout=60, what="some output")
    server.proc.kill9()
    server2 = start_server(inventory, state_dir=server.state_dir, agents=agents_addr)
    data = server2.wait_job(job_id, timeout=120)
    assert data["job"]["state"] == "success", data
    rows: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for run in sorted(data["runs"], key=lambda r: r["id"]):
        rows.setdefault((run["task"], run["host"]), []).append(run)
    for host in ("pb1", "pb2"):
        assert [r["state"] for r in rows[("count", host)]] == ["success"]
        assert [r["state"] for r in rows[("report", host)]] == ["success"]
        assert [(r["attempt"], r["state"]) for r in rows[("flaky", host)]] == [
            (1, "failed"),
            (2, "success"),
        ]
        assert [r["state"] for r in rows[("never", host)]] == ["skipped"]
        # every command ran exactly as often as it has run rows
        assert (marks / f"count-{host}").read_text() == "x\n"
        assert (marks / f"report-{host}").read_text() == "x\n"
        assert (marks / f"flaky-{host}").read_text() == "x\nx\n"
        count = rows[("count", host)][0]
        lines = server2.log_lines(count["id"])
        assert [ln["seq"] for ln in lines] == list(range(1, len(lines) + 1))
        assert [ln["text"] for ln in lines if ln["stream"] == "stdout"] == [
            str(i) for i in range(1, 41)
        ]
        report = server2.log_lines(rows[("report", host)][0]["id"])
        assert [ln["text"] for ln in report] == ["count said 40 lines"]
    assert not (marks / "never").exists()
    kinds = [e["kind"] for e in server2.get(f"/api/runs/{first['id']}")["events"]]
    assert "resumed" in kinds and "reattached" in kinds
    # pb2 is in the second serial batch: it started only after the restart, after pb1 finished
    pb1_done = max(r["finished_at"] for k, v in rows.items() if k[1] == "pb1" for r in v)
    pb2_start = min(
        r["started_at"] for k, v in rows.items() if k[1] == "pb2" for r in v if r["started_at"]
    )
    assert pb2_start >= pb1_done


def test_changed_playbook_is_not_resumed(start_server: ServerFactory, tmp_path: Path) -> None:
    """A playbook edited while its server was down is not continued: its runs end with the reason."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[pbweb]\npb1\npb2\n[pbweb:vars]\neasytask_connection=agent\n")
    server = start_server(inventory)
    book = RESUME_BOOK.format(marks=tmp_path)
    job = server.post("/api/playbooks/run", {"name": "resume.yml", "text": book})
    server.proc.kill9()
    (saved,) = (server.state_dir / "bundles").glob("*/resume.yml")
    saved.write_text(saved.read_text() + "# edited\n")
    server2 = start_server(inventory, state_dir=server.state_dir)
    data = server2.wait_job(job["job"]["id"], timeout=60)
    assert data["job"]["state"] == "terminated"
    # a task skipped by its `when` may have ended before the kill; every other run is refused
    assert {r["reason"] for r in data["runs"] if r["state"] != "skipped"} == {
        f"not resumed: {saved.resolve()} changed since the job started"
    }
