"""Several servers on one PostgreSQL: agents that know more than one server fail over."""

from __future__ import annotations

import json
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from easytask.store.db import Store
from tests.browser.support import add_user
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import PostgresCluster, ServerHandle, db_execute, free_port, wait_until


@pytest.mark.postgres
def test_agent_fails_over_to_the_next_server_on_the_same_database(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """An agent given `--server A,B` uses A; when A stops it runs B's jobs, with A's history."""
    url = postgres.new_database()
    first = start_server(None, "--db", url, state_dir=tmp_path / "a")
    second_state = tmp_path / "b"
    second_state.mkdir()
    # servers sharing a database share the key agents pin
    for name in ("client_key", "client_key.pub"):
        shutil.copy(first.state_dir / name, second_state / name)
    second_port = free_port()
    agent = start_agent(first, "fo1", "--server", f"{first.agents_addr},127.0.0.1:{second_port}")
    job = first.submit("fo1", "echo on-first")
    assert first.wait_job(job["job"]["id"])["job"]["state"] == "success"

    second = start_server(
        None, "--db", url, state_dir=second_state, agents=f"127.0.0.1:{second_port}"
    )
    # a run submitted to the second server executes on the first, which holds the agent
    handed = second.submit("fo1", "echo handed-over", pending_timeout="20s")
    assert second.wait_job(handed["job"]["id"])["job"]["state"] == "success"
    handed_run = handed["runs"][0]["id"]
    assert [ln["text"] for ln in second.log_lines(handed_run)] == ["handed-over"]
    first.proc.stop()
    wait_until(lambda: second.agent_status("fo1") == "online", timeout=60, what="failover")
    assert f"connected to 127.0.0.1:{second_port} as fo1" in agent.output()

    job = second.submit("fo1", "echo on-second")
    assert second.wait_job(job["job"]["id"])["job"]["state"] == "success"
    run_id = job["runs"][0]["id"]
    assert [ln["text"] for ln in second.log_lines(run_id)] == ["on-second"]
    # the first server's runs are in the shared database, visible from the second
    states = [r["state"] for r in second.get("/api/runs")["runs"]]
    assert states == ["success", "success", "success"]


@pytest.mark.postgres
def test_a_server_starting_leaves_another_servers_runs_alone(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A second server starting on the shared database does not resume the first one's runs."""
    url = postgres.new_database()
    first = start_server(None, "--db", url, state_dir=tmp_path / "a")
    start_agent(first, "own1")
    job = first.submit("own1", "sleep 4; echo done-on-first")
    run_id = job["runs"][0]["id"]
    wait_until(
        lambda: first.get(f"/api/runs/{run_id}")["run"]["state"] == "running",
        timeout=30,
        what="run started",
    )
    second = start_server(None, "--db", url, state_dir=tmp_path / "b")
    assert first.wait_job(job["job"]["id"])["job"]["state"] == "success"
    kinds = [e["kind"] for e in second.get(f"/api/runs/{run_id}")["events"]]
    assert "resumed" not in kinds
    assert [ln["text"] for ln in second.log_lines(run_id)] == ["done-on-first"]
    # the job records the server that ran it: the first one's lasting id
    server_ids = db_execute(url, "SELECT server FROM job")
    assert server_ids == [((tmp_path / "a" / "server.id").read_text().strip(),)]


def _second_server(
    start_server: ServerFactory, first: ServerHandle, url: str, state: Path, *extra: str
) -> ServerHandle:
    """Another server on the same database; servers sharing a database share the key agents pin."""
    state.mkdir(parents=True, exist_ok=True)
    for name in ("client_key", "client_key.pub"):
        shutil.copy(first.state_dir / name, state / name)
    return start_server(None, "--db", url, *extra, state_dir=state)


def _agents_on_b(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
    prefix: str,
    count: int,
) -> tuple[str, ServerHandle, ServerHandle, list[str]]:
    """Servers A and B on a new database, `count` agents connected to B, each seen online on A."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    names = [f"{prefix}{i:02d}" for i in range(count)]
    for name in names:
        start_agent(b, name)
    for name in names:
        wait_until(lambda n=name: a.agent_status(n) == "online", timeout=30, what=f"{name} on A")
    return url, a, b, names


def _failover_pair(
    start_server: ServerFactory, url: str, tmp_path: Path
) -> tuple[ServerHandle, ServerHandle]:
    """Servers A and B on one database, each taking over from the other after 3 s of silence."""
    a = start_server(None, "--db", url, "--server-timeout", "3s", state_dir=tmp_path / "a")
    return a, _second_server(start_server, a, url, tmp_path / "b", "--server-timeout", "3s")


def _sse_events(server: ServerHandle, path: str, timeout: float = 60) -> list[dict[str, Any]]:
    """Read a job's event stream to its end (the job's final event)."""
    events: list[dict[str, Any]] = []
    with server.http.stream("GET", path, timeout=timeout) as resp:
        resp.raise_for_status()
        for raw in resp.iter_lines():
            if raw.startswith("data: "):
                events.append(json.loads(raw[6:]))
    return events


@pytest.mark.postgres
def test_a_run_executes_on_the_server_holding_its_agent_and_viewers_anywhere_see_it_live(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Submitted on A, executed by B (which holds the agent); a viewer on A gets B's lines live;
    a kill sent to A stops the command B runs."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    start_agent(b, "far1")
    wait_until(lambda: a.agent_status("far1") == "online", timeout=30, what="seen from A")

    job = a.submit("far1", "sleep 2; for i in 1 2 3 4 5; do echo line-$i; sleep 0.3; done")
    job_id, run_id = job["job"]["id"], job["runs"][0]["id"]
    with ThreadPoolExecutor(1) as pool:
        viewer = pool.submit(_sse_events, a, f"/api/jobs/{job_id}/events")
        wait_until(
            lambda: a.get(f"/api/runs/{run_id}")["run"]["state"] == "running",
            timeout=30,
            what="run started on B",
        )
        events = viewer.result(timeout=90)
    lines = [e["text"] for e in events if e["t"] == "line"]
    assert lines == [f"line-{i}" for i in range(1, 6)]
    assert events[-1] == {"t": "job", "job": job_id, "state": "success"}
    assert a.wait_job(job_id)["job"]["state"] == "success"
    detail = a.get(f"/api/runs/{run_id}")
    kinds = [e["kind"] for e in detail["events"]]
    assert "handed over" in kinds
    assert kinds.count("started") == 1
    assert [ln["text"] for ln in a.log_lines(run_id)] == lines  # stored once, in order
    b_id = (tmp_path / "b" / "server.id").read_text().strip()
    assert db_execute(url, f"SELECT server FROM run WHERE id = {run_id}") == [(b_id,)]
    # the job stays A's: its result and its audit come from there
    a_id = (tmp_path / "a" / "server.id").read_text().strip()
    assert db_execute(url, f"SELECT server FROM job WHERE id = {job_id}") == [(a_id,)]

    marker = tmp_path / "killed-marker"
    slow = a.submit("far1", f"echo $$ > {marker}; exec sleep 300")
    slow_run = slow["runs"][0]["id"]
    wait_until(lambda: marker.exists() and marker.read_text().strip(), timeout=30, what="pid")
    pid = int(marker.read_text())
    a.post(f"/api/runs/{slow_run}/kill")
    final = a.wait_job(slow["job"]["id"], timeout=60)
    assert final["job"]["state"] == "terminated"
    assert final["runs"][0]["reason"].startswith("killed by admin")
    assert not Path(f"/proc/{pid}").exists()


@pytest.mark.postgres
def test_killing_a_server_hands_its_jobs_and_running_commands_to_another(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """kill -9 of server B mid-run: its agent reconnects to A, A takes B's job over, re-attaches
    to the command the agent kept running; every line is stored once and the job succeeds."""
    a, b = _failover_pair(start_server, postgres.new_database(), tmp_path)
    url = a.db_url
    servers = f"{b.agents_addr},{a.agents_addr}"
    agent = start_agent(b, "mover", "--server", servers)
    queued_too = start_agent(b, "idle2", "--server", servers)
    assert queued_too.alive()
    job = b.submit("mover", "for i in $(seq 1 30); do echo n-$i; sleep 0.2; done")
    job_id, run_id = job["job"]["id"], job["runs"][0]["id"]
    wait_until(lambda: len(b.log_lines(run_id)) >= 5, timeout=30, what="first lines on B")
    b.proc.kill9()

    final = a.wait_job(job_id, timeout=120)
    assert final["job"]["state"] == "success", final
    assert [ln["text"] for ln in a.log_lines(run_id)] == [f"n-{i}" for i in range(1, 31)]
    kinds = [e["kind"] for e in a.get(f"/api/runs/{run_id}")["events"]]
    assert kinds.count("started") == 1 and "reattached" in kinds, kinds
    a_id = (tmp_path / "a" / "server.id").read_text().strip()
    assert db_execute(url, f"SELECT server FROM job WHERE id = {job_id}") == [(a_id,)]
    assert f"connected to {a.agents_addr} as mover" in agent.output()
    # B's heartbeat row is gone: it was taken over once
    assert db_execute(url, "SELECT id FROM server_node") == [(a_id,)]
    assert "took over 1 job(s)" in a.proc.output()
    # both agents' coming online on A is on record (admissions stored together, each with its
    # event), and the audit chain is one line (each server hashes with its own key here)
    chain = db_execute(url, "SELECT id, prev_hash, hash, detail FROM audit_event ORDER BY id")
    assert [row[0] for row in chain] == list(range(1, len(chain) + 1))
    assert all(row[1] == before[2] for before, row in zip(chain, chain[1:], strict=False))
    on_a = {json.loads(row[3]).get("agent") for row in chain if a_id in row[3]}
    assert on_a >= {"mover", "idle2"}, chain

    # work goes on: a new job on A runs on both agents
    after = a.submit("mover,idle2", "echo still-here")
    assert a.wait_job(after["job"]["id"])["job"]["state"] == "success"


@pytest.mark.postgres
def test_two_servers_twenty_agents_a_thousand_runs_each_executed_once(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """1,000 short runs submitted to both servers over 20 agents split between them: every run
    executed exactly once (a ledger the commands append to), every line stored once."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    names = [f"w{i:02d}" for i in range(20)]
    for i, name in enumerate(names):
        start_agent(a if i % 2 else b, name, "--slots", "8")
    for name in names:
        wait_until(lambda n=name: a.agent_status(n) == "online", timeout=30, what=f"{name} on A")
        wait_until(lambda n=name: b.agent_status(n) == "online", timeout=30, what=f"{name} on B")
    ledger = tmp_path / "ledger"
    command = f'echo "$EASYTASK_RUN_ID" >> {ledger}; echo "run $EASYTASK_RUN_ID"'
    jobs: list[tuple[ServerHandle, int]] = []
    for _ in range(25):
        for server in (a, b):
            job = server.submit("all", command)
            assert len(job["runs"]) == 20
            jobs.append((server, job["job"]["id"]))
    run_ids: list[int] = []
    for server, job_id in jobs:
        final = server.wait_job(job_id, timeout=600)
        assert final["job"]["state"] == "success", final["runs"]
        run_ids += [r["id"] for r in final["runs"]]
    assert len(run_ids) == len(set(run_ids)) == 1000
    executed = [int(x) for x in ledger.read_text().split()]
    assert sorted(executed) == sorted(run_ids)  # each once, none twice, none missing
    stored = db_execute(
        url,
        "SELECT run_id, count(*), min(text), max(seq) FROM log_line "
        "WHERE stream <> 'system' GROUP BY run_id",
    )
    assert len(stored) == 1000
    assert all(n == 1 and text == f"run {rid}" and seq == 1 for rid, n, text, seq in stored)
    # both servers executed runs for both servers' jobs
    by = db_execute(
        url,
        "SELECT job.server = run.server, count(*) FROM run JOIN job ON job.id = run.job_id "
        "GROUP BY 1 ORDER BY 1",
    )
    assert by == [(False, 500), (True, 500)]


@pytest.mark.postgres
def test_a_schedule_fires_once_across_two_servers(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Both servers read the same playbooks with a schedule every minute: one job per minute."""
    url = postgres.new_database()
    books = tmp_path / "books"
    write(
        books / "tick.yml",
        """\
        name: tick
        hosts: all
        schedule: "* * * * *"
        tasks:
          - name: t
            command: echo tick
        """,
    )
    a = start_server(None, "--db", url, "--playbooks", str(books), state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b", "--playbooks", str(books))
    start_agent(a, "sched1")
    fires = wait_until(
        lambda: db_execute(
            url,
            "SELECT schedule_id, fire_time, server, job_id FROM schedule_fire"
            " WHERE job_id IS NOT NULL",
        ),
        timeout=75,
        what="the first fire",
    )
    (schedule_id, fire_time, _, job_id) = fires[0]
    # the other server's claim of that minute, as its tick makes it, is refused
    other = Store(url)
    try:
        assert not other.claim_fire(schedule_id, fire_time, "the-other-server")
    finally:
        other.close()
    again = db_execute(url, "SELECT fire_time, server, job_id FROM schedule_fire")
    minutes = [row[0] for row in again]
    assert len(minutes) == len(set(minutes))  # one fire per minute, whichever server made it
    jobs = db_execute(url, "SELECT id FROM job WHERE name = 'tick'")
    # a minute that came before the agent connected fired with no host to run on: no job
    assert (job_id,) in jobs and len(jobs) == len([row for row in again if row[2] is not None])
    assert a.wait_job(job_id)["job"]["state"] == "success"
    assert b.get(f"/api/jobs/{job_id}")["job"]["state"] == "success"


@pytest.mark.postgres
def test_a_server_presumed_dead_stops_when_it_wakes_up(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Server B frozen (SIGSTOP) past the timeout: A takes its job over; B, thawed, finds its
    heartbeat row gone and exits 1 without storing anything twice."""
    url = postgres.new_database()
    a, b = _failover_pair(start_server, url, tmp_path)
    assert (a.state_dir / "admin.password").exists()
    assert not (b.state_dir / "admin.password").exists()  # the admin's password is A's
    start_agent(b, "frozen1", "--server", f"{b.agents_addr},{a.agents_addr}")
    job = b.submit("frozen1", "for i in $(seq 1 25); do echo f-$i; sleep 0.2; done")
    job_id, run_id = job["job"]["id"], job["runs"][0]["id"]
    wait_until(lambda: len(b.log_lines(run_id)) >= 3, timeout=30, what="first lines on B")
    b.proc.signal(signal.SIGSTOP)
    try:
        # the agent's keepalives to the frozen B fail: it moves to A, which takes the job over
        final = a.wait_job(job_id, timeout=120)
    finally:
        b.proc.signal(signal.SIGCONT)
    assert final["job"]["state"] == "success", final
    wait_until(lambda: not b.proc.alive(), timeout=60, what="B stopped after waking up")
    assert b.proc.popen.returncode == 1
    assert "presumed dead" in b.proc.output()
    assert [ln["text"] for ln in a.log_lines(run_id)] == [f"f-{i}" for i in range(1, 26)]
    # B, waking, lost its old link: the agent's record stays A's and connected
    a_id = (tmp_path / "a" / "server.id").read_text().strip()
    held = "SELECT connected, server FROM agent WHERE name = 'frozen1'"
    assert db_execute(url, held) == [(True, a_id)]
    assert a.agent_status("frozen1") == "online"


@pytest.mark.postgres
def test_a_playbook_on_one_server_drives_tasks_executed_by_another(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A playbook submitted to A whose agent B holds: retries, `needs` and `results` work as on
    one server (the output B stored is what A's templates read)."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    start_agent(b, "pb1")
    wait_until(lambda: a.agent_status("pb1") == "online", timeout=30, what="seen from A")
    counter = tmp_path / "count"
    book = write(
        tmp_path / "chain.yml",
        f"""\
        name: chain
        hosts: pb1
        tasks:
          - name: first
            retries: 2
            retry_delay: 0.2s
            shell: |
              n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}
              echo token-$n
              [ $n -ge 2 ]
          - name: second
            needs: first
            shell: echo got {{{{ results.first.stdout | quote }}}}
        """,
    )
    result = a.cli("play", str(book), "--format", "json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(json.loads(result.stdout)["runs"], key=lambda r: (r["task"], r["attempt"]))
    assert [(r["task"], r["attempt"], r["state"]) for r in runs] == [
        ("first", 1, "failed"),
        ("first", 2, "success"),
        ("second", 1, "success"),
    ]
    assert [ln["text"] for ln in a.log_lines(runs[2]["id"])] == ["got token-2"]
    b_id = (tmp_path / "b" / "server.id").read_text().strip()
    ids = ",".join(str(r["id"]) for r in runs)
    assert db_execute(url, f"SELECT DISTINCT server FROM run WHERE id IN ({ids})") == [(b_id,)]


@pytest.mark.postgres
def test_servers_on_one_database_share_the_sign_in_limit(
    postgres: PostgresCluster, start_server: ServerFactory, tmp_path: Path
) -> None:
    """Wrong passwords sent at once to two servers of one database: at most five are checked."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    add_user(a, "amy", "auditor", "auditor-pass-1")

    def login(server: ServerHandle, password: str) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as anon:
            body = {"name": "amy", "password": password}
            return anon.post("/api/login", json=body).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        futures = [pool.submit(login, (a, b)[i % 2], f"guess-{i}") for i in range(20)]
        statuses = [f.result() for f in futures]
    assert sorted(set(statuses)) == [401, 429], statuses
    assert statuses.count(401) <= 5, statuses
    assert login(a, "auditor-pass-1") == 429
    assert login(b, "auditor-pass-1") == 429


@pytest.mark.postgres
def test_a_viewer_on_another_server_gets_every_line_before_the_job_ends(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A job on B, whose agent B holds, printing its lines just before it ends: a viewer of the
    job on A gets every line, each once, before the job's final event (the end must not
    overtake the last lines on their way from B to A)."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    start_agent(b, "near1")
    wait_until(lambda: a.agent_status("near1") == "online", timeout=30, what="seen from A")
    for attempt in range(10):  # the race is lost now and then, not every time
        job = b.submit("near1", f"sleep 1; seq 1 300; echo last-{attempt}")
        job_id = job["job"]["id"]
        events = _sse_events(a, f"/api/jobs/{job_id}/events")
        lines = [e["text"] for e in events if e["t"] == "line"]
        assert lines == [*map(str, range(1, 301)), f"last-{attempt}"], (attempt, lines[-3:])
        assert events[-1] == {"t": "job", "job": job_id, "state": "success"}


@pytest.mark.postgres
def test_a_fan_out_across_servers_is_handed_over_and_told_in_batches(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A fan-out on A to agents B holds: every run executed once, by B; the servers tell each
    other of its runs' changes in a few notifications carrying many notices each (a fan-out of
    thousands of runs sent one notification per change, which every server had to receive)."""
    import threading

    import psycopg

    url, a, b, names = _agents_on_b(postgres, start_server, start_agent, tmp_path, "fan", 12)
    received: list[dict[str, Any]] = []
    listening = threading.Event()
    stop = threading.Event()

    def listen() -> None:  # what the servers tell each other, as another server hears it
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("LISTEN easytask")
            listening.set()
            while not stop.is_set():
                for note in conn.notifies(timeout=0.2):
                    received.append(json.loads(note.payload))

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert listening.wait(10)
    ledger = tmp_path / "ledger"
    job = a.submit("fan*", f'echo "$EASYTASK_RUN_ID" >> {ledger}')
    job_id = job["job"]["id"]
    final = a.wait_job(job_id, timeout=120)
    assert final["job"]["state"] == "success", final["runs"]
    run_ids = sorted(r["id"] for r in final["runs"])
    assert len(run_ids) == 12

    def ended() -> set[int]:  # the runs whose end B told the others (for their viewers)
        return {
            n["e"]["run"]
            for n in _notices(received)
            if n.get("k") == "hub" and n["e"].get("t") == "run" and n["e"].get("state") == "success"
        }

    wait_until(lambda: ended() == set(run_ids), timeout=30, what="every run's end told")
    stop.set()
    listener.join(10)
    assert sorted(int(x) for x in ledger.read_text().split()) == run_ids  # each once
    by = db_execute(
        url,
        "SELECT count(*) FROM run JOIN job ON job.id = run.job_id "
        "WHERE run.job_id = :j AND run.server <> job.server",
        {"j": job_id},
    )
    assert by == [(12,)]  # every run executed by B, the server holding its agent
    # each run's dispatch, start and end, and more: several notices in each notification
    notices = _notices(received)
    assert len(notices) >= 3 * 12
    # how many go together depends on what was queued when each was sent (a loaded machine
    # spreads them out), but the burst of dispatches always shares notifications
    sizes = [len(n["m"]) if n.get("k") == "many" else 1 for n in received]
    assert max(sizes) >= 3 and len(received) < len(notices), sizes


@pytest.mark.postgres
def test_runs_whose_agents_another_server_holds_are_on_offer_from_the_jobs_creation(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A fan-out on A to agents B holds and to one A holds: B's runs are stored on offer with the
    job, their `handed over` event in the same transaction as their `queued` one (not handed
    over one by one once the job runs), each executed once by B; A's own run stays A's."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    names = [f"pre{i}" for i in range(6)]
    for name in names:
        start_agent(b, name)
    start_agent(a, "pre-a")
    for name in [*names, "pre-a"]:
        wait_until(lambda n=name: a.agent_status(n) == "online", timeout=30, what=f"{name} on A")
    ledger = tmp_path / "ledger"
    job = a.submit("pre*", f'echo "$EASYTASK_RUN_ID" >> {ledger}')
    final = a.wait_job(job["job"]["id"], timeout=120)
    assert final["job"]["state"] == "success", final["runs"]
    runs = {r["host"]: r["id"] for r in final["runs"]}
    assert sorted(runs) == sorted([*names, "pre-a"])
    assert sorted(int(x) for x in ledger.read_text().split()) == sorted(runs.values())  # once
    a_id = (tmp_path / "a" / "server.id").read_text().strip()
    b_id = (tmp_path / "b" / "server.id").read_text().strip()
    for host, run_id in runs.items():
        events = a.get(f"/api/runs/{run_id}")["events"]
        kinds = [e["kind"] for e in events]
        at = {e["kind"]: e["at"] for e in events}
        (server,) = db_execute(url, f"SELECT server FROM run WHERE id = {run_id}")[0]
        if host == "pre-a":
            assert "handed over" not in kinds and server == a_id
            continue
        assert server == b_id
        assert kinds[:2] == ["queued", "handed over"], kinds
        assert at["handed over"] == at["queued"], events  # one transaction: the job's creation
        assert kinds.count("started") == 1 and kinds.count("handed over") == 1


def _notices(received: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The notices in the notifications received (several may travel in one)."""
    out: list[dict[str, Any]] = []
    for note in received:
        out += note["m"] if note.get("k") == "many" else [note]
    return out


@pytest.mark.postgres
def test_agents_changed_on_one_server_are_known_to_the_others(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Agents enrolled on B are known on A (read there again together, as B tells of them), and
    one revoked on A loses its link on B, which holds it: B refuses its runs from then on, while
    the other agents stay online on both."""
    _, a, b, names = _agents_on_b(postgres, start_server, start_agent, tmp_path, "rv", 8)
    assert a.cli("agents", "revoke", "rv00").returncode == 0
    wait_until(lambda: b.agent_status("rv00") == "revoked", timeout=30, what="rv00 revoked on B")
    assert [b.agent_status(n) for n in names[1:]] == ["online"] * 7
    refused = b.cli("run", "rv00", "-a", "true")
    assert refused.returncode != 0 and "rv00 not accepted" in refused.stderr, refused.stderr
    job = a.submit("rv*", "true")
    assert sorted(r["host"] for r in job["runs"]) == names[1:]
    assert a.wait_job(job["job"]["id"])["job"]["state"] == "success"
