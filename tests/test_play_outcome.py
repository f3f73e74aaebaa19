"""Playbook runs judged on real agents: ignore_errors, failed_when, changed_when; the CLI's
recap, the API, the console and the audit say what was decided and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from easytask.plan.outcome import EXPRESSION_TEXT
from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, free_port, wait_until


@pytest.fixture
def fleet(start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path) -> ServerHandle:
    """A server whose inventory holds two agents, h1 and h2, both connected."""
    server = start_server(write(tmp_path / "inv.ini", "[fleet]\nh1\nh2\n"))
    start_agent(server, "h1")
    start_agent(server, "h2")
    return server


def final(runs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """The last attempt of each (task, host)."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        out[(run["task"], run["host"])] = run
    return out


def stdout_of(server: ServerHandle, run: dict[str, Any]) -> list[str]:
    return [ln["text"] for ln in server.log_lines(run["id"]) if ln["stream"] == "stdout"]


def timeline(server: ServerHandle, run: dict[str, Any]) -> dict[str, str]:
    """A run's timeline events by kind (the last of each)."""
    return {e["kind"]: e["detail"] for e in server.get(f"/api/runs/{run['id']}")["events"]}


def recap(text: str) -> dict[str, dict[str, str]]:
    """The RECAP table of `easytask play` as host -> column -> value."""
    lines = text.split("\nRECAP\n", 1)[1].splitlines()
    header = lines[0].split()
    rows = {}
    for line in lines[1:]:
        if not line.strip():
            break
        cells = line.split()
        rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


def test_ignore_errors_goes_on_and_the_job_succeeds(fleet: ServerHandle, tmp_path: Path) -> None:
    """A failed run of an ignore_errors task stays failed with its exit code, marked ignored;
    the later tasks on its host run, the job succeeds and play exits 0; the recap counts it
    as ignored; the API, the console, the run's timeline and the audit say so."""
    book = write(
        tmp_path / "ignore.yml",
        """\
        hosts: fleet
        tasks:
          - name: flaky
            shell: |
              if [ {{ inventory_hostname }} = h1 ]; then echo boom >&2; exit 3; fi
              echo fine
            ignore_errors: true
          - name: after
            shell: echo "after rc={{ results.flaky.rc }} failed={{ results.flaky.failed }}"
        """,
    )
    done = fleet.cli("play", str(book), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = recap(done.stdout)
    assert rows["h1"] == {
        "OK": "1",
        "CHANGED": "1",
        "FAILED": "0",
        "SKIPPED": "0",
        "TERMINATED": "0",
        "UNREACHABLE": "0",
        "IGNORED": "1",
    }
    assert rows["h2"]["OK"] == "2" and rows["h2"]["IGNORED"] == "0"
    assert "failed (ignored)" in done.stdout
    job_id = int(done.stdout.rsplit("\njob ", 1)[1].split()[0])
    data = fleet.get(f"/api/jobs/{job_id}")
    assert data["job"]["state"] == "success"
    runs = final(data["runs"])
    flaky = runs[("flaky", "h1")]
    assert (flaky["state"], flaky["exit_code"], flaky["ignored"]) == ("failed", 3, True)
    assert flaky["reason"] == "exit code 3"
    assert runs[("flaky", "h2")]["ignored"] is False
    assert runs[("after", "h1")]["state"] == "success"
    assert stdout_of(fleet, runs[("after", "h1")]) == ["after rc=3 failed=True"]
    assert fleet.get(f"/api/runs/{flaky['id']}")["run"]["ignored"] is True
    assert timeline(fleet, flaky)["ignored"] == "ignore_errors: exit code 3; the play goes on"
    finish = fleet.get("/api/audit", action="job.finish")["events"][0]["detail"]
    assert finish["state"] == "success" and finish["ignored"] == 1
    assert finish["runs"]["failed"] == 1

    console = Browserless(fleet)
    assert console.login("admin", admin_password(fleet)).status_code == 303
    job_page = console.http.get(f"/jobs/{job_id}").text
    run_page = console.http.get(f"/runs/{flaky['id']}").text
    console.http.close()
    assert job_page.count('data-testid="mark-ignored"') == 1
    assert '<dd data-testid="ignored">ignore_errors: exit code 3; the play goes on</dd>' in run_page


def test_without_ignore_errors_the_failure_stops_the_host_and_fails_the_job(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """The same failure without ignore_errors skips the host's later tasks and fails the job."""
    book = write(
        tmp_path / "strict.yml",
        """\
        hosts: h1
        tasks:
          - name: flaky
            shell: exit 3
          - name: after
            shell: echo after
        """,
    )
    done = fleet.cli("play", str(book), "--format", "json", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    runs = final(data["runs"])
    assert data["job"]["state"] == "failed"
    assert runs[("flaky", "h1")]["ignored"] is False
    assert runs[("after", "h1")]["state"] == "skipped"


def test_an_ignored_failure_does_not_count_for_max_fail_percentage(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """With serial batches and max_fail_percentage 0, an ignored failure in the first batch
    does not stop the next one."""
    book = write(
        tmp_path / "batches.yml",
        """\
        hosts: fleet
        serial: 1
        max_fail_percentage: 0
        tasks:
          - name: flaky
            shell: exit 5
            ignore_errors: true
          - name: after
            shell: echo after
        """,
    )
    done = fleet.cli("play", str(book), "--format", "json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    runs = final(data["runs"])
    assert data["job"]["state"] == "success"
    assert {h: runs[("flaky", h)]["ignored"] for h in ("h1", "h2")} == {"h1": True, "h2": True}
    assert {h: runs[("after", h)]["state"] for h in ("h1", "h2")} == {
        "h1": "success",
        "h2": "success",
    }


def test_failed_when_and_changed_when_decide_with_their_reasons(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """rc 1 with failed_when false succeeds (exit code kept); rc 0 with ERROR in stdout fails;
    changed_when sets `changed` in the recap and in results.<task>; the run's reason and
    timeline give the exit code and the verdicts."""
    book = write(
        tmp_path / "judged.yml",
        """\
        hosts: h1
        tasks:
          - name: rc1-ok
            shell: echo hello; exit 1
            failed_when: false
            changed_when: false
          - name: created
            shell: echo user created
            changed_when: "'created' in stdout"
          - name: grep-free
            shell: echo nothing to see; exit 2
            failed_when:
              - rc != 2
              - "'ERROR' in stdout"
          - name: reads
            shell: echo "{{ results['rc1-ok'].changed }} {{ results.created.changed }} {{ results['rc1-ok'].rc }}"
          - name: grep-error
            shell: echo ERROR - disk full
            failed_when: "'ERROR' in stdout"
        """,
    )
    done = fleet.cli("play", str(book), timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    # created, grep-free and reads (a command that succeeded); rc1-ok said false
    assert recap(done.stdout)["h1"]["CHANGED"] == "3"
    assert recap(done.stdout)["h1"]["OK"] == "4" and recap(done.stdout)["h1"]["FAILED"] == "1"
    job_id = int(done.stdout.rsplit("\njob ", 1)[1].split()[0])
    runs = final(fleet.get(f"/api/jobs/{job_id}")["runs"])
    ok = runs[("rc1-ok", "h1")]
    assert (ok["state"], ok["exit_code"], ok["changed"]) == ("success", 1, False)
    assert ok["reason"] == "exit code 1, ok by failed_when false (false)"
    events = timeline(fleet, ok)
    assert events["failed_when"] == "failed_when false is false (exit code 1): success"
    assert events["changed_when"] == "changed_when false is false (exit code 1): not changed"
    assert events["finished"] == "failed: exit code 1"  # what the exit code said first
    assert runs[("created", "h1")]["changed"] is True
    assert timeline(fleet, runs[("created", "h1")])["changed"] == (
        "changed_when 'created' in stdout is true"
    )
    assert runs[("grep-free", "h1")]["state"] == "success"
    assert stdout_of(fleet, runs[("reads", "h1")]) == ["False True 1"]
    bad = runs[("grep-error", "h1")]
    assert (bad["state"], bad["exit_code"], bad["changed"]) == ("failed", 0, False)
    assert bad["reason"] == "failed_when 'ERROR' in stdout is true (exit code 0)"
    assert fleet.get(f"/api/jobs/{job_id}")["job"]["state"] == "failed"


def test_an_expression_error_fails_the_run_and_is_not_ignored(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """An expression that cannot be evaluated fails its run with a message naming the task,
    the host and the expression, even under ignore_errors (a fault of the playbook)."""
    book = write(
        tmp_path / "broken.yml",
        """\
        hosts: h1
        tasks:
          - name: judge
            shell: echo hi
            failed_when: rc > threshold
            ignore_errors: true
        """,
    )
    done = fleet.cli("play", str(book), "--format", "json", timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    (run,) = data["runs"]
    assert (run["state"], run["exit_code"], run["ignored"]) == ("failed", 0, False)
    assert run["reason"] == (
        "task 'judge' on host 'h1', failed_when 'rc > threshold': undefined variable 'threshold'"
    )
    assert data["job"]["state"] == "failed"


def test_a_syntax_error_is_refused_before_anything_runs(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """A failed_when that does not parse is refused with the playbook's file:line, by the CLI
    and by the API, and no job is stored."""
    text = "hosts: h1\ntasks:\n  - name: t\n    shell: echo\n    failed_when: rc ==\n"
    book = write(tmp_path / "syntax.yml", text)
    done = fleet.cli("play", str(book), timeout=60)
    assert done.returncode == 2
    assert f"{book}:5:18: invalid expression in 'failed_when' of task 't'" in done.stderr
    answer = fleet.http.post("/api/playbooks/run", json={"name": "s.yml", "text": text})
    assert answer.status_code == 400
    assert "s.yml:5:18: invalid expression in 'failed_when' of task 't'" in answer.json()["error"]
    assert fleet.get("/api/runs")["runs"] == []


def test_expressions_see_a_bounded_head_of_a_huge_output(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """On an output past the bound, the expressions see its first EXPRESSION_TEXT characters
    (a word after them is not seen) and the timeline says so."""
    lines = EXPRESSION_TEXT // 100 + 2000
    book = write(
        tmp_path / "huge.yml",
        f"""\
        hosts: h1
        tasks:
          - name: big
            shell: "head -c {lines * 100} /dev/zero | tr '\\\\0' x | fold -w 99; echo TAIL"
            failed_when: "'TAIL' in stdout or stdout | length > {EXPRESSION_TEXT}"
        """,
    )
    done = fleet.cli("play", str(book), "--format", "json", timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    (run,) = json.loads(done.stdout)["runs"]
    assert run["state"] == "success" and run["out_lines"] >= lines
    note = timeline(fleet, run)["failed_when"]
    assert note.endswith(f"it saw the first {EXPRESSION_TEXT} characters of the output")


def test_a_run_resumed_after_a_server_kill_is_judged_too(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 of the server while a failed_when task runs: the restarted server re-attaches to
    the run, judges its end by the task's expressions, and ignore_errors still holds after."""
    inventory = write(tmp_path / "inv.ini", "h1\n")
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(inventory, agents=agents_addr)
    start_agent(server, "h1")
    text = (
        "hosts: h1\ntasks:\n"
        "  - name: slow\n    shell: echo started; sleep 3; exit 1\n"
        "    failed_when: false\n    changed_when: rc == 1\n"
        "  - name: flaky\n    shell: exit 4\n    ignore_errors: true\n"
        "  - name: after\n    shell: echo after\n"
    )
    job = server.post("/api/playbooks/run", {"name": "resume.yml", "text": text})
    slow = next(r for r in job["runs"] if r["task"] == "slow")
    wait_until(lambda: server.log_lines(slow["id"]), timeout=60, what="the slow task to start")
    server.proc.kill9()
    server2 = start_server(inventory, state_dir=server.state_dir, agents=agents_addr)
    data = server2.wait_job(job["job"]["id"], timeout=120)
    assert data["job"]["state"] == "success", data
    runs = final(data["runs"])
    judged = runs[("slow", "h1")]
    assert (judged["state"], judged["exit_code"], judged["changed"]) == ("success", 1, True)
    assert judged["reason"] == "exit code 1, ok by failed_when false (false)"
    assert "resumed" in timeline(server2, judged)
    assert runs[("flaky", "h1")]["ignored"] is True
    assert runs[("after", "h1")]["state"] == "success"
