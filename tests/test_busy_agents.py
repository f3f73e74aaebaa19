"""Busy agents: over --max-load or --min-free-memory an agent gets no new work until it recovers.

Each agent reads its load and memory from a directory the test writes (`--proc-root`), so the
test holds it over its limits, and lets it recover, by writing two files.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, wait_until
from tests.support.procs import REPO, easytask_cmd

CPUS = os.cpu_count() or 1
G = 1 << 30


def proc_root(path: Path, load_per_cpu: float, available: int = 8 * G) -> Path:
    """Write a loadavg and a meminfo as the kernel would (an agent reads them under `path`)."""
    path.mkdir(parents=True, exist_ok=True)
    load = load_per_cpu * CPUS
    (path / "loadavg.tmp").write_text(f"{load:.2f} {load:.2f} {load:.2f} 1/100 4242\n")
    os.replace(path / "loadavg.tmp", path / "loadavg")
    meminfo = f"MemTotal: 16777216 kB\nMemAvailable: {available // 1024} kB\n"
    (path / "meminfo.tmp").write_text(meminfo)
    os.replace(path / "meminfo.tmp", path / "meminfo")
    return path


def agent(server: ServerHandle, name: str) -> dict[str, Any]:
    return next(a for a in server.get("/api/agents")["agents"] if a["name"] == name)


def status_is(server: ServerHandle, name: str, status: str) -> bool:
    return agent(server, name)["status"] == status


def one_host(server: ServerHandle) -> str:
    """The host `easytask run pool --one` ran on."""
    result = server.cli("run", "pool", "--one", "-a", "true", "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    return str(run["host"])


def test_agent_over_max_load_gets_no_work_until_it_recovers(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """An agent over --max-load is busy (with the reason) in the API, the CLI and the console;
    --one picks another agent; a run pinned to it waits queued, ends unreachable when its
    pending timeout passes, and starts once the agent recovers; each change is audited once."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[pool]\nhot\ncool\n")
    server = start_server(inventory)
    hot = proc_root(tmp_path / "hot-proc", 0.05)
    cool = proc_root(tmp_path / "cool-proc", 5.0)  # no limit: never busy
    beat = ("--heartbeat", "0.2")
    start_agent(server, "hot", "--max-load", "2.0", "--proc-root", str(hot), *beat)
    start_agent(server, "cool", "--proc-root", str(cool), *beat)
    facts = agent(server, "hot")["facts"]
    assert facts["max_load"] == 2.0 and facts["mem_available"] == 8 * G
    assert facts["free_slots"] == 4 and facts["busy"] == ""
    # equal free slots: the lower load per CPU wins
    assert one_host(server) == "hot"

    proc_root(hot, 3.1)
    wait_until(lambda: status_is(server, "hot", "busy"), timeout=20, what="hot busy")
    assert agent(server, "hot")["busy"] == "load 3.1/CPU > 2.0"
    listing = server.cli("agents")
    assert listing.returncode == 0, listing.stderr
    assert "busy (load 3.1/CPU > 2.0)" in next(
        line for line in listing.stdout.splitlines() if line.startswith("hot ")
    )
    console = Browserless(server)
    assert console.login("admin", admin_password(server)).status_code == 303
    page = console.http.get("/agents").text
    console.close()
    row = page[page.index('data-agent="hot"') :].split("</tr>")[0]
    assert 'class="state state-busy"' in row
    assert 'data-testid="busy-reason">load 3.1/CPU &gt; 2.0</span>' in row
    assert "Delete…" not in row  # it is connected

    # the figures change with each heartbeat; the state (and its audit) only once
    proc_root(hot, 3.5)
    wait_until(lambda: agent(server, "hot")["busy"] == "load 3.5/CPU > 2.0", what="a new reason")
    proc_root(hot, 3.1)
    wait_until(
        lambda: agent(server, "hot")["busy"] == "load 3.1/CPU > 2.0", what="the reason again"
    )
    # --one and run_on: any go to the other agent, though its load (5/CPU) is higher
    assert one_host(server) == "cool"
    book = tmp_path / "any.yml"
    book.write_text(
        "name: any\nhosts: pool\ntasks:\n  - name: once\n    run_on: any\n    command: 'true'\n"
    )
    played = server.cli("play", str(book), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    assert [r["host"] for r in json.loads(played.stdout)["runs"]] == ["cool"]
    # a run pinned to the busy agent waits, and its pending timeout ends it
    gone = server.submit("hot", "echo never", pending_timeout=1)
    ended = server.wait_job(gone["job"]["id"])["runs"][0]
    assert ended["state"] == "unreachable"
    assert ended["reason"] == "agent hot stayed busy (load 3.1/CPU > 2.0) for 1s"
    pinned = server.submit("hot", "echo ran-after-recovery", pending_timeout=120)
    run_id = pinned["runs"][0]["id"]
    wait_until(
        lambda: any(
            e["kind"] == "waiting" and "agent hot is busy (load 3.1/CPU > 2.0)" in e["detail"]
            for e in server.get(f"/api/runs/{run_id}")["events"]
        ),
        what="the pinned run waiting",
    )
    assert server.get(f"/api/runs/{run_id}")["run"]["state"] == "queued"

    proc_root(hot, 0.5)
    data = server.wait_job(pinned["job"]["id"])
    assert data["runs"][0]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(run_id)] == ["ran-after-recovery"]
    assert status_is(server, "hot", "online") and agent(server, "hot")["busy"] == ""
    # many heartbeats while busy, one event each way
    (went,) = server.get("/api/audit", action="agent.busy")["events"]
    assert went["actor"] == "hot" and went["detail"]["reason"] == "load 3.1/CPU > 2.0"
    (back,) = server.get("/api/audit", action="agent.ready")["events"]
    assert back["detail"]["was"] == "load 3.1/CPU > 2.0"
    assert server.cli("audit", "verify").returncode == 0


def test_inventory_limit_tighter_than_the_agents_counts(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A group's easytask_min_free_memory above the agent's --min-free-memory makes it busy (the
    server's limit is read when the agent comes online); a run queued for it starts once enough
    memory is available again."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[small]\nlean\n\n[small:vars]\neasytask_min_free_memory=1G\n")
    server = start_server(inventory)
    lean = proc_root(tmp_path / "lean-proc", 0.1, available=512 << 20)
    start_agent(
        server,
        "lean",
        "--min-free-memory",
        "256M",
        "--proc-root",
        str(lean),
        "--heartbeat",
        "0.2",
        wait=False,
    )
    wait_until(lambda: status_is(server, "lean", "busy"), timeout=40, what="lean busy")
    assert agent(server, "lean")["busy"] == "memory available 512M < 1G"
    job = server.submit("lean", "echo fits", pending_timeout=120)
    proc_root(lean, 0.1, available=2 * G)
    assert server.wait_job(job["job"]["id"])["runs"][0]["state"] == "success"
    assert status_is(server, "lean", "online")


def test_a_started_run_is_reattached_though_its_agent_came_back_busy(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Busy holds back new work only: a run started before, whose agent was killed and came back
    busy, is re-attached and ends with all its lines."""
    server = start_server()
    root = proc_root(tmp_path / "hold-proc", 0.1)
    state = tmp_path / "agents" / "hold"
    flags = ("--max-load", "1.0", "--proc-root", str(root), "--heartbeat", "0.2")
    first = start_agent(server, "hold", *flags, state_dir=state)
    go = tmp_path / "go"
    job = server.submit(
        "hold", f"echo started; while [ ! -e {go} ]; do sleep 0.1; done; echo ended"
    )
    run_id = job["runs"][0]["id"]
    wait_until(lambda: len(server.log_lines(run_id)) == 1, what="the run started")
    proc_root(root, 5.0)
    wait_until(lambda: status_is(server, "hold", "busy"), timeout=20, what="hold busy")
    first.kill9()  # the command goes on under the agent's supervisor
    wait_until(lambda: status_is(server, "hold", "unreachable"), timeout=20, what="link lost")
    start_agent(server, "hold", *flags, state_dir=state, enroll=False, wait=False)
    wait_until(lambda: status_is(server, "hold", "busy"), timeout=40, what="back, busy")
    go.touch()
    data = server.wait_job(job["job"]["id"], timeout=60)
    assert data["runs"][0]["state"] == "success"
    out = [ln["text"] for ln in server.log_lines(run_id) if ln["stream"] == "stdout"]
    assert out == ["started", "ended"]
    events = server.get(f"/api/runs/{run_id}")["events"]
    assert "reattached" in [e["kind"] for e in events]
    assert not [e for e in events if "busy" in e["detail"]]  # it waited for the link only
    assert status_is(server, "hold", "busy")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--max-load", "0"], {}, "--max-load: 0.0 is not a load per CPU"),
        (["--max-load", "nan"], {}, "--max-load: nan is not a load per CPU"),
        ([], {"EASYTASK_AGENT_MAX_LOAD": "lots"}, "--max-load: 'lots' is not a load per CPU"),
        ([], {"EASYTASK_AGENT_MIN_FREE_MEMORY": "a bit"}, "--min-free-memory: not a size"),
        (["--min-free-memory", "a bit"], {}, "argument --min-free-memory: not a size: 'a bit'"),
        (["--heartbeat", "0"], {}, "--heartbeat must be at least 50ms"),
    ],
)
def test_bad_limits_stop_the_agent_before_it_dials(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    """A limit that is not one is a usage error (exit 2) naming the flag; nothing is dialled."""
    result = subprocess.run(
        easytask_cmd(
            "agent",
            "--server",
            "127.0.0.1:1",
            "--name",
            "a1",
            "--state-dir",
            str(tmp_path / "s"),
            *args,
        ),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "s").exists()


def test_limits_follow_an_approved_label_and_an_inventory_edit(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """The server reads a connected agent's limits again when the groups its labels place it
    in change (an admin approves a label whose group sets one) and when the inventory changes,
    though it reads only an agent coming online when nothing else changed."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[small]\n\n[small:vars]\neasytask_min_free_memory=1G\n")
    server = start_server(inventory)
    lean = proc_root(tmp_path / "lean-proc", 0.1, available=512 << 20)
    start_agent(server, "lean", "--group", "small", "--proc-root", str(lean), "--heartbeat", "0.2")
    start_agent(server, "other", "--heartbeat", "0.2")  # comes online after: lean not re-read
    assert status_is(server, "lean", "online")  # the label places it in no group yet
    approved = server.cli("agents", "approve", "lean", "--groups", "small")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    wait_until(lambda: status_is(server, "lean", "busy"), timeout=40, what="lean busy")
    assert agent(server, "lean")["busy"] == "memory available 512M < 1G"
    inventory.write_text("[small]\n\n[small:vars]\neasytask_min_free_memory=256M\n")
    wait_until(lambda: status_is(server, "lean", "online"), timeout=40, what="lean ready")
