"""Loops over an earlier task's results, end to end on real agents: the items are rendered on
each host when the task above has ended there, run in order as planned items do, survive a
server kill before and after they were rendered, and a loop that cannot be rendered fails
that host's task with its reason."""

from __future__ import annotations

import json
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import REPO, PostgresCluster, ServerHandle, db_execute, free_port, wait_until


@pytest.fixture
def fleet(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """The sample inventory with agents for web1 and web2."""
    server = start_server(REPO / "inventory")
    for name in ("web1", "web2"):
        start_agent(server, name)
    return server


def final(runs: list[dict]) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        out[(run["task"], run["host"])] = run
    return out


def test_a_loop_over_the_task_above_runs_its_items_per_host(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """web1 lists three users, web2 none: web1 gets one run per user (label from the item),
    in order, each judged by failed_when with the item and retried on its own; web2's task is
    one skipped run, as a planned empty loop; the next task reads results.greet in item order."""
    counter = tmp_path / "count"
    book = write(
        tmp_path / "users.yml",
        f"""\
        name: users
        hosts: web
        tasks:
          - name: list users
            shell: if [ {{{{ inventory_hostname }}}} = web1 ]; then printf 'root\\nbin\\nbob\\n'; fi
          - name: greet
            loop: "{{{{ results['list users'].stdout_lines }}}}"
            loop_control: {{label: "user {{{{ item }}}}"}}
            retries: 1
            retry_delay: 0.1s
            shell: >-
              sleep 0.2; echo hello {{{{ item }}}};
              if [ {{{{ item }}}} = bin ]; then n=$(cat {counter} 2>/dev/null || echo 0);
              echo $((n+1)) > {counter}; [ $n -ge 1 ]; fi
            failed_when: rc != 0 or item == 'nobody'
          - name: after
            shell: echo {{{{ results.greet.results | map(attribute='item') | join(',') }}}} {{{{ results.greet.state }}}}
        """,
    )
    result = fleet.cli("play", str(book), "--format", "json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["job"]["state"] == "success"
    web1 = sorted((r for r in data["runs"] if r["host"] == "web1"), key=lambda r: r["id"])
    assert [(r["task"], r["attempt"], r["state"]) for r in web1] == [
        ("list users", 1, "success"),
        ("greet (item=user root)", 1, "success"),
        ("after", 1, "success"),
        ("greet (item=user bin)", 1, "failed"),
        ("greet (item=user bob)", 1, "success"),
        ("greet (item=user bin)", 2, "success"),
    ]  # the run that stood for the task is the first item's; the others are added after
    runs = final(data["runs"])
    items = [runs[(f"greet (item=user {u})", "web1")] for u in ("root", "bin", "bob")]
    for before, later in zip(items, items[1:], strict=False):
        assert datetime.fromisoformat(later["started_at"]) >= datetime.fromisoformat(
            before["finished_at"]
        )
    assert datetime.fromisoformat(runs[("after", "web1")]["started_at"]) >= datetime.fromisoformat(
        items[-1]["finished_at"]
    )
    assert [fleet.log_lines(r["id"])[0]["text"] for r in items] == [
        "hello root", "hello bin", "hello bob",
    ]  # fmt: skip
    assert runs[("greet", "web2")]["state"] == "skipped"
    assert runs[("greet", "web2")]["reason"] == "the loop gave no item"
    assert not any(r["task"].startswith("greet (") for r in data["runs"] if r["host"] == "web2")
    assert [ln["text"] for ln in fleet.log_lines(runs[("after", "web1")]["id"])] == [
        "root,bin,bob success"
    ]
    assert [ln["text"] for ln in fleet.log_lines(runs[("after", "web2")]["id"])] == ["skipped"]


def test_the_ansible_habit_prints_each_item_as_it_runs(fleet: ServerHandle, tmp_path: Path) -> None:
    """The loop over /etc/passwd's users, followed in text: each item's output as it comes,
    and the recap names the items."""
    book = write(
        tmp_path / "passwd.yml",
        """\
        name: passwd
        hosts: web1
        tasks:
          - name: list users
            command: "cut -d: -f1 /etc/passwd"
          - name: greet
            command: echo hello {{ item }}
            loop: "{{ results['list users'].stdout_lines }}"
        """,
    )
    result = fleet.cli("play", str(book), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    users = [u.split(":")[0] for u in Path("/etc/passwd").read_text().splitlines() if u]
    assert "root" in users
    printed = [ln for ln in result.stdout.splitlines() if " | hello " in ln]
    assert [ln.split(" | hello ", 1)[1] for ln in printed] == users
    assert "greet (item=root)" in result.stdout


def test_a_loop_that_cannot_be_rendered_fails_that_host_only(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """On web1 the loop gives a text, not a list: that host's task fails with the reason on its
    run and the task below is skipped there (ignore_errors judges items, and there is none);
    web2 runs its items, the failed one ignored; the job ends failed."""
    book = write(
        tmp_path / "bad.yml",
        """\
        name: bad
        hosts: web
        tasks:
          - name: probe
            shell: if [ {{ inventory_hostname }} = web1 ]; then echo one; else printf '1\\n2\\n'; fi
          - name: each
            loop: "{{ results.probe.stdout if inventory_hostname == 'web1' else results.probe.stdout_lines }}"
            shell: echo {{ item }}
            ignore_errors: true
            failed_when: item == '1'
          - name: after
            shell: echo after
        """,
    )
    result = fleet.cli("play", str(book), "--format", "json", timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["job"]["state"] == "failed"
    runs = final(data["runs"])
    each = runs[("each", "web1")]
    assert each["state"] == "failed"
    assert each["reason"].startswith("the loop's items: ")
    assert "bad.yml:7:" in each["reason"]
    assert "task 'each' on host 'web1', loop must give a list, got the text 'one'" in each["reason"]
    assert runs[("after", "web1")]["state"] == "skipped"
    assert runs[("after", "web1")]["reason"] == "needs 'each' on web1, which ended failed"
    # ignore_errors lets a failed item pass, as in a planned loop; not a loop with no items
    web2 = [runs[(n, "web2")] for n in ("each (item=1)", "each (item=2)", "after")]
    assert [(r["state"], r["ignored"]) for r in web2] == [
        ("failed", True), ("success", False), ("success", False),
    ]  # fmt: skip


RESUME = """\
name: resume-results
hosts: pbweb
tasks:
  - name: list
    shell: printf 'a\\nb\\nc\\n'
  - name: steps
    loop: "{{{{ results.list.stdout_lines }}}}"
    shell: >-
      echo {{{{ item }}}} >> {marks}/steps;
      if [ {{{{ item }}}} = b ]; then for i in $(seq 1 30); do echo $i; sleep 0.1; done; fi;
      echo {{{{ item }}}}
  - name: later
    loop: "{{{{ results.steps.results | map(attribute='item') | list }}}}"
    shell: echo {{{{ item }}}} >> {marks}/later; echo {{{{ item }}}}
  - name: report
    shell: echo {{{{ results.later.results | map(attribute='stdout') | join(',') }}}}
"""


def test_loops_over_results_continue_after_a_server_kill(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 during item b of `steps` (expanded by the first server): the restarted server
    takes its stored items as they are (b re-attached, c run once, no item row twice) and
    expands `later`, which the first server never reached."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[pbweb]\npb1\n[pbweb:vars]\neasytask_connection=agent\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(inventory, agents=agents_addr)
    start_agent(server, "pb1")
    job = server.post(
        "/api/playbooks/run", {"name": "resume.yml", "text": RESUME.format(marks=marks)}
    )
    job_id = job["job"]["id"]
    assert [r["task"] for r in job["runs"]] == ["list", "steps", "later", "report"]

    def item_b() -> int | None:
        runs = server.get(f"/api/jobs/{job_id}")["runs"]
        found = [r for r in runs if r["task"] == "steps (item=b)"]
        return found[0]["id"] if found else None

    b_id = wait_until(item_b, timeout=60, what="item b's run")
    wait_until(lambda: len(server.log_lines(b_id)) > 5, timeout=60, what="item b's output")
    server.proc.kill9()
    server2 = start_server(inventory, state_dir=server.state_dir, agents=agents_addr)
    data = server2.wait_job(job_id, timeout=120)
    assert data["job"]["state"] == "success", data
    names = sorted(r["task"] for r in data["runs"] if r["attempt"] == 1)
    assert names == sorted([
        "list", "steps (item=a)", "steps (item=b)", "steps (item=c)",
        "later (item=a)", "later (item=b)", "later (item=c)", "report",
    ])  # fmt: skip
    assert all(r["state"] == "success" for r in data["runs"]), data["runs"]
    assert (marks / "steps").read_text().split() == ["a", "b", "c"]
    assert (marks / "later").read_text().split() == ["a", "b", "c"]
    runs = final(data["runs"])
    assert [ln["text"] for ln in server2.log_lines(runs[("report", "pb1")]["id"])] == ["a,b,c"]


def _second_server(
    start_server: ServerFactory, first: ServerHandle, url: str, state: Path, *extra: str
) -> ServerHandle:
    """Another server on the same database; servers sharing a database share the key agents pin."""
    state.mkdir(parents=True, exist_ok=True)
    for name in ("client_key", "client_key.pub"):
        shutil.copy(first.state_dir / name, state / name)
    return start_server(None, "--db", url, *extra, state_dir=state)


@pytest.mark.postgres
def test_a_loop_over_results_driven_by_one_server_runs_on_another(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """A playbook submitted to A whose agent B holds: A renders the loop from the output B
    stored, and B executes every item (the rows A added for them are claimed as planned ones)."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b = _second_server(start_server, a, url, tmp_path / "b")
    start_agent(b, "pb1")
    wait_until(lambda: a.agent_status("pb1") == "online", timeout=30, what="seen from A")
    book = write(
        tmp_path / "users.yml",
        """\
        name: users
        hosts: pb1
        tasks:
          - name: list
            shell: printf 'x\\ny\\n'
          - name: each
            loop: "{{ results.list.stdout_lines }}"
            shell: echo item-{{ item }}
          - name: report
            shell: echo {{ results.each.results | map(attribute='stdout') | join(',') }}
        """,
    )
    result = a.cli("play", str(book), "--format", "json", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = final(json.loads(result.stdout)["runs"])
    assert sorted(task for task, _ in runs) == ["each (item=x)", "each (item=y)", "list", "report"]
    assert [ln["text"] for ln in a.log_lines(runs[("report", "pb1")]["id"])] == ["item-x,item-y"]
    b_id = (tmp_path / "b" / "server.id").read_text().strip()
    ids = ",".join(str(r["id"]) for r in runs.values())
    assert db_execute(url, f"SELECT DISTINCT server FROM run WHERE id IN ({ids})") == [(b_id,)]
