"""`run --group` and `groups JOB` end to end: real agents, a real sshd, the real CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import SSHD, easytask_cmd, wait_until
from tests.test_grouping import read_back

# Every host prints the same, but db1 also writes to stderr and exits 3; web03 prints an escape.
COMMAND = (
    "echo same; echo line2; "
    "if [ {{ inventory_hostname }} = db1 ]; then echo odd >&2; exit 3; fi; "
    "if [ {{ inventory_hostname }} = web03 ]; then printf 'bell\\033[2J\\n'; fi"
)


@pytest.fixture
def fleet(tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory, sshd: SSHD):
    """A server with four agents (web01, web02, web03, db1) and one agentless host (web04)."""
    inventory = write(
        tmp_path / "inv" / "hosts.ini",
        f"""\
        [web]
        web[01:03]
        web04 {sshd.host_vars()}

        [db]
        db1
        """,
    )
    server = start_server(inventory)
    for name in ("web01", "web02", "web03", "db1"):
        start_agent(server, name)
    return server


def test_run_group_folds_hosts_with_the_same_output(fleet) -> None:
    """Hosts with the same output and exit code are one block under their host range, the
    biggest first; escapes are shown escaped; a failed host makes the exit code 1; `groups JOB`
    prints the same from the stored lines, and `--format json` is a list of groups."""
    result = fleet.cli("run", "all", "--group", "-e", "x=1", "-a", COMMAND)
    assert result.returncode == 1, result.stdout + result.stderr
    blocks = result.stdout.split("\n\n")
    assert blocks[:3] == [
        "== web[01:02], web04 (3 hosts): success, exit 0\nsame\nline2",
        "== db1 (1 host): failed, exit 3\nsame\nline2\n! odd",
        "== web03 (1 host): success, exit 0\nsame\nline2\nbell\\x1b[2J",
    ]
    assert (
        blocks[3].startswith("job ")
        and "5 host(s) in 3 group(s): 1 failed, 4 success in" in (blocks[3])
    )
    job_id = int(blocks[3].split()[1].rstrip(":"))

    stored = fleet.cli("groups", f"job:{job_id}")
    assert stored.returncode == 1, stored.stderr
    assert stored.stdout.split("\n\n")[:3] == blocks[:3]

    as_json = fleet.cli("groups", str(job_id), "--format", "json", "--raw")
    groups = json.loads(as_json.stdout)
    assert groups[0] == {
        "hosts": ["web01", "web02", "web04"],
        "hosts_text": "web[01:02], web04",
        "exit_code": 0,
        "state": "success",
        "stdout": ["same", "line2"],
        "stderr": [],
    }
    assert [(g["hosts"], g["exit_code"], g["stderr"]) for g in groups[1:]] == [
        (["db1"], 3, ["odd"]),
        (["web03"], 0, []),
    ]
    assert groups[2]["stdout"][-1] == "bell\x1b[2J"
    assert sorted(read_back(groups[0]["hosts_text"])) == groups[0]["hosts"]


def test_run_group_json_and_all_alike(fleet) -> None:
    """Every host alike is one group; `run --group --format json` prints the list and exits 0;
    --group with -o is refused."""
    result = fleet.cli("run", "web", "--group", "--format", "json", "-a", "echo hello")
    assert result.returncode == 0, result.stdout + result.stderr
    groups = json.loads(result.stdout)
    assert groups == [
        {
            "hosts": ["web01", "web02", "web03", "web04"],
            "hosts_text": "web[01:04]",
            "exit_code": 0,
            "state": "success",
            "stdout": ["hello"],
            "stderr": [],
        }
    ]
    both = fleet.cli("run", "web", "--group", "-o", "-a", "true")
    assert both.returncode == 2 and "--group" in both.stderr
    missing = fleet.cli("groups", "nine")
    assert missing.returncode == 2 and "'nine' is not JOB or job:N" in missing.stderr


def test_groups_of_a_playbook_fold_each_task_apart(fleet, tmp_path: Path) -> None:
    """`groups JOB` of a playbook: each task's hosts fold apart under its name, tasks in order;
    the JSON names each group's task."""
    book = write(
        tmp_path / "two.yml",
        """\
        name: two
        hosts: web
        tasks:
          - name: first
            shell: echo one
          - name: second
            shell: "echo {{ 'odd' if inventory_hostname == 'web02' else 'even' }}"
        """,
    )
    played = fleet.cli("play", str(book), "--format", "json")
    assert played.returncode == 0, played.stdout + played.stderr
    job_id = json.loads(played.stdout)["job"]["id"]
    result = fleet.cli("groups", str(job_id))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n\n")[:3] == [
        "TASK first\n== web[01:04] (4 hosts): success, exit 0\none",
        "TASK second\n== web01, web[03:04] (3 hosts): success, exit 0\neven",
        "== web02 (1 host): success, exit 0\nodd",
    ]
    groups = json.loads(fleet.cli("groups", str(job_id), "--format", "json").stdout)
    assert [(g["task"], g["hosts_text"]) for g in groups] == [
        ("first", "web[01:04]"),
        ("second", "web01, web[03:04]"),
        ("second", "web02"),
    ]


def test_ctrl_c_terminates_the_job_and_prints_its_groups(fleet) -> None:
    """SIGINT to `run --group` terminates the remote commands, then prints what they printed,
    folded: both hosts terminated alike."""
    proc = subprocess.Popen(
        easytask_cmd("run", "web01,web02", "--group", "-a", "echo begun; sleep 60"),
        env=fleet.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # as at a terminal: a test runner in the background has SIGINT ignored, and its children too
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        wait_until(
            lambda: len(fleet.get("/api/runs", status="running")["runs"]) == 2, what="both running"
        )
        wait_until(
            lambda: all(
                any(ln["text"] == "begun" for ln in fleet.log_lines(r["id"]))
                for r in fleet.get("/api/runs")["runs"]
            ),
            what="both printed",
        )
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 1, out + err
    assert "terminating job" in err
    assert re.match(r"== web\[01:02\] \(2 hosts\): terminated.*\nbegun\n\n", out), out
