"""Ad hoc runs end to end: real agents, a real sshd, the real CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import SSHD, easytask_cmd, wait_until


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory, sshd: SSHD):
    """A server with two agents (web1, db1) and one agentless host (plain1) on a real sshd."""
    inventory = write(
        tmp_path / "inv" / "hosts.ini",
        f"""\
        [web]
        web1

        [db]
        db1

        [plain]
        plain1 {sshd.host_vars()}

        [prod:children]
        web
        db
        plain
        """,
    )
    server = start_server(inventory)
    start_agent(server, "web1")
    start_agent(server, "db1")
    return server


def test_run_all_streams_prefixed_output_and_summary(fleet) -> None:
    """`easytask run all` runs on agents and the agentless host, prints `host | line`, exits 0."""
    result = fleet.cli("run", "all", "-a", "echo out-$(hostname | wc -c); echo err >&2")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for host in ("web1", "db1", "plain1"):
        assert any(re.match(rf"^{host}\s* \| out-\d+$", ln) for ln in lines), result.stdout
        assert any(re.match(rf"^{host}\s* ! err$", ln) for ln in lines), result.stdout
    assert re.search(r"job \d+: 3 host\(s\): 3 success in", result.stdout)
    summary = [
        ln.split()
        for ln in lines
        if ln.split()[:1] in (["web1"], ["db1"], ["plain1"]) and "success" in ln
    ]
    assert len(summary) == 3


def test_exit_code_1_when_a_host_fails(fleet) -> None:
    """One failing host makes the CLI exit 1 and the summary shows its exit code."""
    result = fleet.cli(
        "run", "prod", "-a", 'if [ "$EASYTASK_RUN_ID" ] && [ $(hostname) ]; then exit 0; fi; exit 0'
    )
    assert result.returncode == 0, result.stderr
    result = fleet.cli("run", "db1,plain1", "-a", "exit 3")
    assert result.returncode == 1
    assert re.search(r"^db1\s+failed\s+3\s", result.stdout, re.M), result.stdout
    assert re.search(r"^plain1\s+failed\s+3\s", result.stdout, re.M), result.stdout


def test_pattern_errors_exit_2(fleet) -> None:
    """A pattern that matches nothing is a usage error naming the part, exit 2."""
    result = fleet.cli("run", "web:&nosuchgroup", "-a", "true")
    assert result.returncode == 2
    assert "nosuchgroup" in result.stderr


def test_history_and_logs(fleet) -> None:
    """A finished run is found again with `runs` filters and its output with `logs`."""
    result = fleet.cli("run", "web1", "-a", "printf 'a\\nERROR b\\nc\\n'", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    run_id = data["runs"][0]["id"]
    # whom it ran as is stored with the run's end, before the job's end is told
    assert data["runs"][0]["ran_as"], data["runs"][0]
    events = [e["kind"] for e in fleet.get(f"/api/runs/{run_id}")["events"]]
    assert events == ["queued", "dispatched", "started", "ran as", "finished"]
    listing = fleet.cli(
        "runs", "--host", "web1", "--status", "success", "--since", "1h", "--format", "json"
    )
    assert run_id in [r["id"] for r in json.loads(listing.stdout)]
    none = fleet.cli("runs", "--host", "web1", "--status", "failed", "--format", "json")
    assert run_id not in [r["id"] for r in json.loads(none.stdout)]
    logs = fleet.cli("logs", str(run_id))
    assert logs.stdout == "a\nERROR b\nc\n"
    assert fleet.cli("logs", f"run:{run_id}").stdout == logs.stdout  # as `kill run:N` takes it
    errors = fleet.cli("logs", str(run_id), "--level", "ERROR")
    assert errors.stdout == "ERROR b\n"
    grep = fleet.cli("logs", str(run_id), "--grep", "c")
    assert grep.stdout == "c\n"
    text = fleet.cli("runs", "--job", str(data["job"]["id"]))
    assert text.stdout.split("\n")[0].split()[:4] == ["RUN", "JOB", "HOST", "STATUS"]


def test_timeout_terminates_with_reason(fleet) -> None:
    """--timeout ends the command on agent and agentless hosts as terminated, reason timeout."""
    started = time.monotonic()
    result = fleet.cli("run", "web1,plain1", "-a", "sleep 30", "--timeout", "1")
    assert time.monotonic() - started < 20
    assert result.returncode == 1
    assert re.search(r"^web1\s+terminated.*timeout after 1s", result.stdout, re.M), result.stdout
    assert re.search(r"^plain1\s+terminated.*timeout after 1s", result.stdout, re.M), result.stdout


@pytest.mark.parametrize("host", ["web1", "plain1"])
def test_kill_leaves_no_process_of_the_group(fleet, host: str, tmp_path: Path) -> None:
    """Killing a job TERMs the command's whole process group: no child survives."""
    tag = f"{os.getpid()}{len(host)}"
    sleeps = [f"sleep 300.{tag}{i}" for i in range(3)]
    job = fleet.submit(host, f"{sleeps[0]} & {sleeps[1]} & echo started; {sleeps[2]}")
    run_id = job["runs"][0]["id"]
    wait_until(lambda: fleet.log_lines(run_id), what="started line")
    wait_until(lambda: all(_pids_with(s) for s in sleeps), what="all three sleeps running")
    fleet.post(f"/api/jobs/{job['job']['id']}/kill")
    data = fleet.wait_job(job["job"]["id"])
    run = data["runs"][0]
    assert run["state"] == "terminated"
    assert "killed by admin" in run["reason"]
    # the background sleeps shared the group: none is left
    wait_until(lambda: not any(_pids_with(s) for s in sleeps), timeout=10, what="processes gone")
    events = [e["kind"] for e in fleet.get(f"/api/runs/{run_id}")["events"]]
    assert events[:3] == ["queued", "dispatched", "started"]
    assert "terminating" in events and events[-1] == "finished"


def _pids_with(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and "python" not in cmdline:
            pids.append(int(entry.name))
    return pids


def test_ten_megabytes_stored_completely_in_order(fleet) -> None:
    """10 MB of numbered lines from one command are all stored, numbered 1..n, in order."""
    n = 200_000
    job = fleet.submit(
        "web1",
        f'seq 1 {n} | awk \'{{printf "%08d %s\\n", $1, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}\'',
    )
    data = fleet.wait_job(job["job"]["id"], timeout=60)
    run = data["runs"][0]
    assert run["state"] == "success"
    assert run["out_bytes"] == n * 51
    lines = fleet.get(f"/api/runs/{run['id']}/log", limit=100000)["lines"]
    lines += fleet.get(f"/api/runs/{run['id']}/log", after=100000, limit=100000)["lines"]
    assert [ln["seq"] for ln in lines] == list(range(1, n + 1))
    assert [int(ln["text"][:8]) for ln in lines] == list(range(1, n + 1))


def test_invalid_utf8_and_huge_line_are_stored(fleet) -> None:
    """Invalid UTF-8 is kept visibly and a 1 MB line without newline is stored whole."""
    job = fleet.submit(
        "web1,plain1", "printf 'bad \\377\\376 bytes\\n'; head -c 1048000 /dev/zero | tr '\\0' x"
    )
    data = fleet.wait_job(job["job"]["id"])
    for run in data["runs"]:
        assert run["state"] == "success", run
        lines = fleet.log_lines(run["id"])
        assert lines[0]["text"] == "bad \\xff\\xfe bytes"
        assert lines[1]["text"] == "x" * 1048000
        assert len(lines) == 2


def test_offline_agent_run_waits_for_it_then_runs(
    tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """A run for an agent that is offline waits, and runs when the agent comes back."""
    inventory = write(
        tmp_path / "inv.ini", "[web]\nlate1\nlate2\n[web:vars]\neasytask_connection=agent\n"
    )
    server = start_server(inventory)
    job = server.submit("late1", "echo hello from late1", pending_timeout=60)
    run_id = job["runs"][0]["id"]
    wait_until(
        lambda: "waiting" in [e["kind"] for e in server.get(f"/api/runs/{run_id}")["events"]],
        what="the run waiting for its agent",
    )
    assert server.get(f"/api/runs/{run_id}")["run"]["state"] == "queued"
    start_agent(server, "late1")
    data = server.wait_job(job["job"]["id"])
    assert data["runs"][0]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(run_id)] == ["hello from late1"]
    kinds = [e["kind"] for e in server.get(f"/api/runs/{run_id}")["events"]]
    assert kinds[:2] == ["queued", "waiting"]


def test_offline_agent_past_pending_timeout_is_unreachable(
    tmp_path: Path, start_server: ServerFactory
) -> None:
    """With a short --pending-timeout the run of an absent agent ends unreachable, exit 1."""
    inventory = write(tmp_path / "inv.ini", "[web]\nlate2\n[web:vars]\neasytask_connection=agent\n")
    server = start_server(inventory)
    result = server.cli("run", "web", "-a", "true", "--pending-timeout", "1")
    assert result.returncode == 1
    assert re.search(r"^late2\s+unreachable.*did not connect within 1s", result.stdout, re.M), (
        result.stdout
    )


def test_ctrl_c_terminates_remote_commands(fleet) -> None:
    """SIGINT to `easytask run` terminates the remote commands and records them as terminated."""
    import signal
    import subprocess

    from tests.support import easytask_cmd

    proc = subprocess.Popen(
        easytask_cmd("run", "web1,plain1", "-a", "echo begun; sleep 60"),
        env=fleet.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as at a terminal: a test runner started in the background has SIGINT ignored, and an
        # ignored signal stays ignored in the programs it starts
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until(
            lambda: len([r for r in fleet.get("/api/runs", status="running")["runs"]]) == 2,
            what="both running",
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "terminating job" in err
    assert re.search(r"^web1\s+terminated.*killed by admin", out, re.M), out
    assert re.search(r"^plain1\s+terminated.*killed by admin", out, re.M), out


def test_two_installations_on_one_agentless_host_kill_only_their_own_runs(
    start_server: ServerFactory, sshd: SSHD, tmp_path: Path
) -> None:
    """Two servers with their own databases number runs alike; a kill from one stops its own
    command on the shared host, never the other's."""
    inventory = write(tmp_path / "inv" / "hosts.ini", f"[plain]\nplain1 {sshd.host_vars()}\n")
    a = start_server(inventory)
    b = start_server(inventory)
    mine = a.submit("plain1", "sleep 30; echo a-done")
    theirs = b.submit("plain1", "sleep 4; echo b-done")
    run_id = mine["runs"][0]["id"]
    assert theirs["runs"][0]["id"] == run_id  # the same run id on each
    for server in (a, b):
        wait_until(
            lambda s=server: s.get(f"/api/runs/{run_id}")["run"]["state"] == "running",
            what="both running",
        )
    a.post(f"/api/runs/{run_id}/kill")
    assert a.wait_job(mine["job"]["id"])["job"]["state"] == "terminated"
    final = b.wait_job(theirs["job"]["id"])
    assert final["job"]["state"] == "success", final["runs"]
    assert [ln["text"] for ln in b.log_lines(run_id)] == ["b-done"]


def test_ansible_style_run_flags(fleet) -> None:
    """-l narrows the pattern, -e makes the command a template rendered per host, -o prints one
    line per host, --list-hosts runs nothing, and --url/--token work after the subcommand."""
    listed = fleet.cli("run", "prod", "-a", "true", "--list-hosts", "-l", "web1,plain1")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "  hosts (2):\n    web1\n    plain1\n"
    assert fleet.get("/api/runs")["runs"] == []  # nothing ran
    env = {k: v for k, v in fleet.env().items() if k not in ("EASYTASK_URL", "EASYTASK_TOKEN")}
    result = subprocess.run(
        easytask_cmd(
            "run", "prod", "-l", "!db1", "-e", "word=hi", "-e", '{"n": 2}', "-o",
            "-a", "echo {{ word }} {{ n * 2 }} {{ inventory_hostname }}; echo e >&2",
            "--url", fleet.url, "--token=" + fleet.token,
        ),
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(result.stdout.splitlines()) == [
        "plain1 | SUCCESS | rc=0 | (stdout) hi 4 plain1 | (stderr) e",
        "web1 | SUCCESS | rc=0 | (stdout) hi 4 web1 | (stderr) e",
    ]
    # without -e a command is not a template: {{ }} reaches the host as written
    plain = fleet.cli("run", "web1", "-o", "-a", "echo '{{ word }}'")
    assert plain.stdout == "web1 | SUCCESS | rc=0 | (stdout) {{ word }}\n"
    undefined = fleet.cli("run", "web1", "-e", "a=1", "-a", "echo {{ nope }}")
    assert undefined.returncode == 2 and "nope" in undefined.stderr


def test_run_user_is_the_ssh_user_of_agentless_hosts(fleet) -> None:
    """-u replaces the inventory's ansible_user for hosts reached over SSH; agents run commands
    as their own user, so -u for one is refused with the reason rather than ignored."""
    other = fleet.cli("run", "plain1", "-u", "nobody", "-o", "-a", "id -un")
    assert other.returncode == 1
    assert other.stdout.startswith("plain1 | UNREACHABLE | (cannot connect to nobody@"), (
        other.stdout
    )
    refused = fleet.cli("run", "prod", "-u", "deploy", "-a", "true")
    assert refused.returncode == 2
    assert "-u/--user 'deploy' is the SSH user of agentless hosts; web1, db1 run commands" in (
        refused.stderr
    )
    bad = fleet.cli("run", "plain1", "-u=-x;rm", "-a", "true")
    assert bad.returncode == 2 and "is not a user name" in bad.stderr
