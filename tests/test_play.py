"""Playbooks end to end: the examples, DAG and skips, retries, serial, run_on any, files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import REPO, SSHD, ServerHandle, wait_until


@pytest.fixture
def demo_fleet(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """The sample inventory with its three agents, like `make demo`."""
    server = start_server(REPO / "inventory")
    for name in ("web1", "web2", "db1"):
        start_agent(server, name)
    return server


def play(server: ServerHandle, path: Path | str, *args: str, timeout: float = 120):
    return server.cli("play", str(path), *args, timeout=timeout)


def final(runs: list[dict]) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        out[(run["task"], run["host"])] = run
    return out


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "playbooks").glob("*.yml")))
def test_examples_run_on_real_agents(demo_fleet: ServerHandle, example: str) -> None:
    """Every example playbook runs to success on the demo agents."""
    result = play(demo_fleet, REPO / "playbooks" / example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "RECAP" in result.stdout


def test_dag_order_skip_propagation_and_when(demo_fleet: ServerHandle, tmp_path: Path) -> None:
    """A failed task skips what waits for it (written `needs` or the task above); `when` false
    skips; tasks with `needs: []` still run."""
    book = write(
        tmp_path / "dag.yml",
        """\
        name: dag
        hosts: web1
        tasks:
          - name: a
            shell: echo a; exit 4
          - name: b
            needs: a
            shell: echo b
          - name: c
            shell: echo c
          - name: d
            needs: []
            shell: echo d
          - name: e
            when: inventory_hostname == "nope"
            shell: echo e
          - name: f
            needs: e
            shell: echo f
        """,
    )
    result = play(demo_fleet, book, "--format", "json")
    assert result.returncode == 1
    runs = final(json.loads(result.stdout)["runs"])
    states = {task: runs[(task, "web1")]["state"] for task in "abcdef"}
    assert states == {
        "a": "failed",
        "b": "skipped",
        "c": "skipped",
        "d": "success",
        "e": "skipped",
        "f": "success",
    }
    assert "needs 'a'" in runs[("b", "web1")]["reason"]
    assert "'b'" in runs[("c", "web1")]["reason"]
    assert runs[("e", "web1")]["reason"].startswith("when is false")


def test_retries_store_every_attempt(demo_fleet: ServerHandle, tmp_path: Path) -> None:
    """A command that fails twice then succeeds leaves three attempts, each with its output."""
    counter = tmp_path / "count"
    book = write(
        tmp_path / "retry.yml",
        f"""\
        name: retry
        hosts: web1
        tasks:
          - name: flaky
            retries: 2
            retry_delay: 0.2s
            retry_backoff: 2
            shell: |
              n=$(cat {counter} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {counter}
              echo attempt $n
              [ $n -ge 3 ]
        """,
    )
    result = play(demo_fleet, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(json.loads(result.stdout)["runs"], key=lambda r: r["id"])
    assert [(r["attempt"], r["state"]) for r in runs] == [
        (1, "failed"),
        (2, "failed"),
        (3, "success"),
    ]
    for run in runs:
        lines = [ln["text"] for ln in demo_fleet.log_lines(run["id"])]
        assert lines == [f"attempt {run['attempt']}"]
    kinds = [e["kind"] for e in demo_fleet.get(f"/api/runs/{runs[0]['id']}")["events"]]
    assert "retry scheduled" in kinds


def test_serial_and_max_fail_percentage_stop_after_first_batch(
    demo_fleet: ServerHandle, tmp_path: Path
) -> None:
    """With serial 1 and max_fail_percentage 0 a failure on the first host stops the rest."""
    book = write(
        tmp_path / "serial.yml",
        """\
        name: serial
        hosts: prod
        serial: 1
        max_fail_percentage: 0
        tasks:
          - name: step
            shell: '[ "{{ inventory_hostname }}" != web1 ]'
        """,
    )
    result = play(demo_fleet, book, "--format", "json")
    assert result.returncode == 1
    runs = final(json.loads(result.stdout)["runs"])
    assert runs[("step", "web1")]["state"] == "failed"
    for host in ("web2", "db1"):
        assert runs[("step", host)]["state"] == "skipped"
        assert "1 of 1 hosts failed in batch 1" in runs[("step", host)]["reason"]


def test_run_on_any_picks_the_least_busy_agent(demo_fleet: ServerHandle, tmp_path: Path) -> None:
    """run_on: any goes to the agent of the set with the fewest running tasks."""
    busy = demo_fleet.submit("web1", "sleep 20")
    wait_until(
        lambda: demo_fleet.get(f"/api/jobs/{busy['job']['id']}")["runs"][0]["state"] == "running",
        what="web1 busy",
    )
    book = write(
        tmp_path / "any.yml",
        """\
        name: any
        hosts: web
        tasks:
          - name: once
            run_on: any
            command: hostname
        """,
    )
    result = play(demo_fleet, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert run["host"] == "web2"
    demo_fleet.post(f"/api/jobs/{busy['job']['id']}/kill")


def test_quote_keeps_hostile_values_one_argument(demo_fleet: ServerHandle, tmp_path: Path) -> None:
    """A variable holding `x; touch FILE` rendered with quote stays one argument."""
    pwned = tmp_path / "pwned"
    book = write(
        tmp_path / "quote.yml",
        """\
        name: quote
        hosts: web1
        tasks:
          - name: echo
            shell: printf '[%s]\\n' {{ value | quote }}
        """,
    )
    result = play(
        demo_fleet, book, "-e", json.dumps({"value": f"x; touch {pwned}"}), "--format", "json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert [ln["text"] for ln in demo_fleet.log_lines(run["id"])] == [f"[x; touch {pwned}]"]
    assert not pwned.exists()


def test_timeout_terminates_task(demo_fleet: ServerHandle, tmp_path: Path) -> None:
    """A task past its timeout is terminated with reason timeout."""
    book = write(
        tmp_path / "slow.yml",
        """\
        name: slow
        hosts: web1
        tasks:
          - name: sleepy
            timeout: 1s
            shell: sleep 30
        """,
    )
    result = play(demo_fleet, book)
    assert result.returncode == 1
    assert re.search(r"sleepy\s+web1\s+terminated.*timeout after 1s", result.stdout), result.stdout


def test_check_prints_the_plan_without_a_server(tmp_path: Path) -> None:
    """--check renders every command for every host and needs no server."""
    import subprocess
    import sys

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "easytask",
            "play",
            "playbooks/health.yml",
            "--check",
            "-i",
            "inventory",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    for host in ("web1", "web2", "db1"):
        assert host in result.stdout
    assert "uptime" in result.stdout


def test_copy_to_agent_and_agentless_is_idempotent(
    tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory, sshd: SSHD
) -> None:
    """copy sends the file over SFTP on both links; the second run reports unchanged."""
    inventory = write(
        tmp_path / "inv.ini",
        f"""\
        [hosts]
        agent1
        plain1 {sshd.host_vars()}
        """,
    )
    server = start_server(inventory)
    start_agent(server, "agent1")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "files").mkdir()
    (tmp_path / "book" / "files" / "app.conf").write_text("port = 8080\n")
    dest_dir = tmp_path / "dest"
    dest_dir.mkdir()
    book = write(
        tmp_path / "book" / "copy.yml",
        f"""\
        name: copy
        hosts: hosts
        tasks:
          - name: conf
            copy:
              src: files/app.conf
              dest: "{dest_dir}/{{{{ inventory_hostname }}}}.conf"
              mode: "0640"
        """,
    )
    first = play(server, book, "--format", "json")
    assert first.returncode == 0, first.stdout + first.stderr
    assert {r["reason"] for r in json.loads(first.stdout)["runs"]} == {"changed"}
    for host in ("agent1", "plain1"):
        target = dest_dir / f"{host}.conf"
        assert target.read_text() == "port = 8080\n"
        assert target.stat().st_mode & 0o777 == 0o640
    second = play(server, book, "--format", "json")
    assert second.returncode == 0
    assert {r["reason"] for r in json.loads(second.stdout)["runs"]} == {"unchanged"}


def test_script_runs_on_agent_and_agentless(
    tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory, sshd: SSHD
) -> None:
    """script uploads the file, runs it with its arguments and removes it."""
    inventory = write(
        tmp_path / "inv.ini",
        f"""\
        [hosts]
        agent2
        plain2 {sshd.host_vars()}
        """,
    )
    server = start_server(inventory)
    start_agent(server, "agent2")
    script = write(
        tmp_path / "book" / "show.py",
        """\
        #!/usr/bin/env python3
        import os, sys
        print("args:", " ".join(sys.argv[1:]))
        print("dir:", os.path.dirname(os.path.abspath(__file__)))
        """,
    )
    script.chmod(0o755)
    book = write(
        tmp_path / "book" / "script.yml",
        """\
        name: script
        hosts: hosts
        tasks:
          - name: show
            script: show.py one "two words"
        """,
    )
    result = play(server, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    for run in json.loads(result.stdout)["runs"]:
        lines = [ln["text"] for ln in server.log_lines(run["id"])]
        assert lines[0] == "args: one two words"
        remote_dir = lines[1].split(": ", 1)[1]
        assert remote_dir.startswith("/tmp/.easytask-")
        assert not Path(remote_dir).exists()


def test_tags_choose_the_tasks_and_the_order_holds(
    demo_fleet: ServerHandle, tmp_path: Path
) -> None:
    """`play --tags/--skip-tags` run only the chosen tasks, still top to bottom; `environment`
    reaches the command as `env` does."""
    book = write(
        tmp_path / "tags.yml",
        f"""\
        name: tags
        hosts: web1
        tasks:
          - name: first
            tags: deploy
            shell: echo one > {tmp_path}/order
          - name: debug-only
            tags: [debug, never]
            shell: echo debug
          - name: second
            tags: deploy
            environment: {{WORD: two}}
            shell: echo "$WORD" >> {tmp_path}/order; cat {tmp_path}/order
          - name: always
            tags: always
            shell: echo always
          - name: untagged
            shell: echo untagged
        """,
    )
    result = play(
        demo_fleet, book, "--tags", "deploy", "--skip-tags", "nothing", "--format", "json"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runs = final(json.loads(result.stdout)["runs"])
    assert sorted(task for task, _ in runs) == ["always", "first", "second"]
    assert runs[("second", "web1")]["state"] == "success"
    log = demo_fleet.cli("logs", str(runs[("second", "web1")]["id"]))
    assert log.stdout.splitlines()[-2:] == ["one", "two"]
    bad = play(demo_fleet, book, "--tags", "a b")
    assert bad.returncode == 2 and "--tags: bad tag 'a b'" in bad.stderr


def test_vars_files_travel_with_the_playbook(demo_fleet: ServerHandle, tmp_path: Path) -> None:
    """`easytask play` sends the vars files with the playbook; the server reads them in order."""
    (tmp_path / "vars").mkdir()
    (tmp_path / "vars" / "common.yml").write_text("greeting: hello\nwho: nobody\n")
    (tmp_path / "vars" / "site.yml").write_text("who: '{{ inventory_hostname }}'\n")
    book = write(
        tmp_path / "vf.yml",
        """\
        hosts: db1
        vars: {greeting: overridden}
        vars_files: [vars/common.yml, vars/site.yml]
        tasks:
          - name: greet
            command: echo {{ greeting }} {{ who }}
        """,
    )
    result = play(demo_fleet, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    run = final(json.loads(result.stdout)["runs"])[("greet", "db1")]
    assert demo_fleet.cli("logs", str(run["id"])).stdout.splitlines()[-1] == "hello db1"


def test_facts_reach_templates_from_agents_and_agentless_hosts(
    start_server: ServerFactory, start_agent: AgentFactory, sshd: SSHD, tmp_path: Path
) -> None:
    """`ansible_*` facts: an agent's come from its hello, an agentless host's are gathered with
    one command for the job; both read this machine, so both print what it is."""
    from easytask.agent.facts import local_facts
    from easytask.facts import fact_vars

    inventory = write(
        tmp_path / "inv" / "hosts.ini", f"[web]\nweb1\n[plain]\nplain1 {sshd.host_vars()}\n"
    )
    server = start_server(inventory)
    start_agent(server, "web1")
    book = write(
        tmp_path / "facts.yml",
        """\
        hosts: web1,plain1
        tasks:
          - name: show
            command: >-
              echo {{ ansible_distribution }}/{{ ansible_facts.os_family }}/
              {{ ansible_processor_vcpus }}/{{ ansible_hostname }}/{{ ansible_architecture }}
        """,
    )
    here = fact_vars(local_facts())
    expected = "{}/{}/ {}/{}/{}".format(
        *(
            here[f"ansible_{k}"]
            for k in ("distribution", "os_family", "processor_vcpus", "hostname", "architecture")
        )
    )
    result = play(server, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = final(json.loads(result.stdout)["runs"])
    for host in ("web1", "plain1"):
        log = server.cli("logs", str(runs[("show", host)]["id"]))
        assert log.stdout.splitlines()[-1] == expected, (host, log.stdout)
    check = server.cli("play", str(book), "--check", "-i", str(inventory))
    assert check.returncode == 0, check.stdout + check.stderr
    # --check knows no live host: facts show as placeholders (split into words by `command`)
    assert "'<fact' 'ansible_processor_vcpus>/<fact' 'ansible_hostname>/<fact'" in check.stdout


SPIN = (
    "echo {% for i in range(n | int) %}{% for j in range(n | int) %}{% endfor %}{% endfor %}"
    "spun {{ n }}"
)


def test_a_template_past_its_limits_is_refused_or_fails_its_run(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Nested loops of 100000 x 100000 items: refused at once when the playbook is submitted
    (400 naming the task and the limit; nothing stored), or, when only another host's
    variables make it so, that host's run fails with the same message while the rest runs."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[spin]\nspin1 n=10\nspin2 n=100000\n")
    server = start_server(inventory)
    for name in ("spin1", "spin2"):
        start_agent(server, name)
    runs_before = len(server.get("/api/runs")["runs"])
    text = "name: s\nhosts: spin\ntasks:\n  - name: spin\n    shell: '{}'\n"
    refused = server.http.post(
        "/api/playbooks/run", json={"text": text.format(SPIN.replace("n | int", "100000"))}
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"] == (
        "task 'spin' on host 'spin1': the template went past its limit of 1000000 steps "
        "(loop iterations and calls)"
    )
    assert server.http.get("/healthz").status_code == 200
    assert len(server.get("/api/runs")["runs"]) == runs_before

    job = server.post("/api/playbooks/run", {"text": text.format(SPIN)})
    done = server.wait_job(job["job"]["id"])
    runs = {r["host"]: r for r in done["runs"]}
    assert runs["spin1"]["state"] == "success"
    assert [ln["text"] for ln in server.log_lines(runs["spin1"]["id"])] == ["spun 10"]
    assert runs["spin2"]["state"] == "failed"
    assert runs["spin2"]["reason"] == (
        "task 'spin' on host 'spin2': the template went past its limit of 1000000 steps "
        "(loop iterations and calls)"
    )
