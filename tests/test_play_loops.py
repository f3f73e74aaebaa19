"""Loops end to end on real agents: items in order per host, labels in the CLI, the console and
results.<task>, a failed item, retries per item, the empty loop, bad loops refused unstored."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import REPO, ServerHandle, free_port, wait_until


@pytest.fixture
def fleet(start_server: ServerFactory, start_agent: AgentFactory) -> ServerHandle:
    """The sample inventory with agents for web1 and web2."""
    server = start_server(REPO / "inventory")
    for name in ("web1", "web2"):
        start_agent(server, name)
    return server


def play(server: ServerHandle, path: Path, *args: str):
    return server.cli("play", str(path), *args, timeout=120)


def final(runs: list[dict]) -> dict[tuple[str, str], dict]:
    out: dict[tuple[str, str], dict] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        out[(run["task"], run["host"])] = run
    return out


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


def test_items_run_in_order_per_host_and_later_tasks_see_every_result(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """Each item is its own run named with its label; the second starts after the first ended
    on the same host (the first sleeps, so running them at once would write them out of order);
    the next task reads results.<task>.results in item order."""
    book = write(
        tmp_path / "loop.yml",
        f"""\
        name: loop
        hosts: web
        tasks:
          - name: steps
            loop:
              - {{n: one, pause: 0.5}}
              - {{n: two, pause: 0}}
              - {{n: three, pause: 0}}
            loop_control:
              label: "step {{{{ item.n }}}}"
            shell: sleep {{{{ item.pause }}}}; echo {{{{ item.n }}}} >> {tmp_path}/{{{{ inventory_hostname }}}}.log; echo {{{{ item.n }}}}
          - name: report
            shell: echo {{{{ results.steps.results | map(attribute='stdout') | join(',') }}}} {{{{ results.steps.state }}}} {{{{ results.steps.results[2].label }}}}
        """,
    )
    result = play(fleet, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = final(json.loads(result.stdout)["runs"])
    names = ["steps (item=step one)", "steps (item=step two)", "steps (item=step three)"]
    for host in ("web1", "web2"):
        assert [runs[(n, host)]["state"] for n in [*names, "report"]] == ["success"] * 4
        assert (tmp_path / f"{host}.log").read_text().split() == ["one", "two", "three"]
        for before, after in zip(names, names[1:], strict=False):
            assert at(runs[(after, host)]["started_at"]) >= at(runs[(before, host)]["finished_at"])
        report = runs[("report", host)]
        assert [ln["text"] for ln in fleet.log_lines(report["id"])] == [
            "one,two,three success step three"
        ]
    assert len(runs) == 8

    text = play(fleet, book)  # the text output names each item's run too
    assert text.returncode == 0, text.stdout + text.stderr
    for name in names:
        assert name in text.stdout


def test_a_failed_item_stops_that_host_only_and_retries_are_per_item(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """Item b fails on web1: c and the next task do not run there; web2 goes on. An item that
    fails once then succeeds within its retries counts as a success."""
    counter = tmp_path / "count"
    book = write(
        tmp_path / "fail.yml",
        f"""\
        name: fail
        hosts: web
        tasks:
          - name: flaky
            run_once: true
            retries: 1
            retry_delay: 0.1s
            loop: [x]
            shell: n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 1 ]
          - name: each
            needs: []
            loop: [a, b, c]
            shell: test {{{{ item }}}} != b || test {{{{ inventory_hostname }}}} != web1
          - name: next
            shell: echo next
        """,
    )
    result = play(fleet, book, "--format", "json")
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["job"]["state"] == "failed"
    flaky = sorted(
        (r for r in data["runs"] if r["task"] == "flaky (item=x)"), key=lambda r: r["id"]
    )
    assert [(r["attempt"], r["state"]) for r in flaky] == [(1, "failed"), (2, "success")]
    runs = final(data["runs"])
    states = {
        host: [
            runs[(n, host)]["state"]
            for n in ("each (item=a)", "each (item=b)", "each (item=c)", "next")
        ]
        for host in ("web1", "web2")
    }
    assert states == {
        "web1": ["success", "failed", "skipped", "skipped"],
        "web2": ["success", "success", "success", "success"],
    }
    assert (
        "needs 'each (item=b)' on web1, which ended failed"
        in runs[("each (item=c)", "web1")]["reason"]
    )


def test_an_empty_loop_skips_the_task_and_the_console_names_the_items(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """No item on web2: its run is skipped as such and the next task runs. The job page and
    the run page show the task with the item's label."""
    book = write(
        tmp_path / "empty.yml",
        """\
        name: empty
        hosts: web
        tasks:
          - name: some
            loop: "{{ ['only'] if inventory_hostname == 'web1' else [] }}"
            loop_control: {label: "the {{ item }} one"}
            shell: echo {{ item }}
          - name: next
            shell: echo {{ results.some.results | length }} {{ results.some.state }}
        """,
    )
    result = play(fleet, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    runs = final(data["runs"])
    assert set(runs) == {
        ("some (item=the only one)", "web1"), ("some", "web2"), ("next", "web1"), ("next", "web2"),
    }  # fmt: skip
    assert (runs[("some", "web2")]["state"], runs[("some", "web2")]["reason"]) == (
        "skipped",
        "the loop gave no item",
    )
    lines = {
        h: [ln["text"] for ln in fleet.log_lines(runs[("next", h)]["id"])] for h in ("web1", "web2")
    }
    assert lines == {"web1": ["1 success"], "web2": ["0 skipped"]}

    client = Browserless(fleet)
    try:
        assert client.login("admin", admin_password(fleet)).status_code == 303
        item = runs[("some (item=the only one)", "web1")]
        job_page = client.http.get(f"/jobs/{data['job']['id']}")
        assert job_page.status_code == 200
        row = rf'<td class="task">([^<]*)</td>\s*<td class="host"><a href="/runs/{item["id"]}">web1'
        found = re.search(row, job_page.text)
        assert found, job_page.text[job_page.text.find("status-grid") :]
        assert found[1] == "some (item=the only one)"
        # the tasks x hosts matrix: the item in its task's row, with its label
        assert 'data-testid="cell-label">the only one</span>' in job_page.text
        run_page = client.http.get(f"/runs/{item['id']}")
        assert run_page.status_code == 200
        assert 'data-testid="task">some (item=the only one)</dd>' in run_page.text
        adhoc = fleet.submit("web1", "echo hi")  # an ad hoc job's runs have no task to show
        fleet.wait_job(adhoc["job"]["id"])
        page = client.http.get(f"/jobs/{adhoc['job']['id']}").text
        assert '<td class="task">' not in page and ">Task</th>" not in page
    finally:
        client.close()


def test_a_loop_that_gives_no_list_is_refused_and_nothing_is_stored(
    fleet: ServerHandle, tmp_path: Path
) -> None:
    """Refused when the job is planned, naming the file:line, the task and the host."""
    book = write(
        tmp_path / "bad.yml",
        """\
        name: bad
        hosts: web
        tasks:
          - name: ok
            shell: echo ok
          - name: broken
            loop: "{{ inventory_hostname }}"
            shell: echo {{ item }}
        """,
    )
    result = play(fleet, book)
    assert result.returncode != 0
    assert "bad.yml:7:" in result.stderr
    assert (
        "task 'broken' on host 'web1', loop must give a list, got the text 'web1'" in result.stderr
    )
    refused = fleet.http.post(
        "/api/playbooks/run", json={"name": "bad.yml", "text": book.read_text()}
    )
    assert refused.status_code == 400, refused.text
    assert "bad.yml:7:" in refused.json()["error"]
    assert "task 'broken' on host 'web1', loop must give a list" in refused.json()["error"]
    assert fleet.get("/api/runs")["runs"] == []
    assert [e for e in fleet.get("/api/audit")["events"] if e["action"] == "job.submit"] == []
    assert not list((fleet.state_dir / "bundles").glob("*/bad.yml"))  # the refused bundle is gone


RESUME_LOOP = """\
name: resume-loop
hosts: pbweb
tasks:
  - name: steps
    loop: [a, b, c]
    shell: >-
      echo {{{{ item }}}} >> {marks}/{{{{ inventory_hostname }}}};
      if [ {{{{ item }}}} = b ]; then for i in $(seq 1 30); do echo $i; sleep 0.1; done; fi;
      echo {{{{ item }}}}
  - name: none
    loop: []
    shell: echo never >> {marks}/never
  - name: report
    shell: echo {{{{ results.steps.results | map(attribute='stdout_lines') | map('last') | join(',') }}}}
"""


def test_a_loop_continues_after_a_server_kill(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """kill -9 of the server during item b: the restarted server re-attaches to b, runs c once,
    and the next task still reads every item's result."""
    inventory = tmp_path / "inv.ini"
    inventory.write_text("[pbweb]\npb1\n[pbweb:vars]\neasytask_connection=agent\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    agents_addr = f"127.0.0.1:{free_port()}"
    server = start_server(inventory, agents=agents_addr)
    start_agent(server, "pb1")
    job = server.post(
        "/api/playbooks/run", {"name": "resume.yml", "text": RESUME_LOOP.format(marks=marks)}
    )
    job_id = job["job"]["id"]
    b = next(r for r in job["runs"] if r["task"] == "steps (item=b)")
    wait_until(lambda: len(server.log_lines(b["id"])) > 5, timeout=60, what="item b's output")
    server.proc.kill9()
    server2 = start_server(inventory, state_dir=server.state_dir, agents=agents_addr)
    data = server2.wait_job(job_id, timeout=120)
    assert data["job"]["state"] == "success", data
    runs = final(data["runs"])
    assert [runs[(n, "pb1")]["state"] for n in ("steps (item=a)", "steps (item=b)", "steps (item=c)", "none", "report")] == [
        "success", "success", "success", "skipped", "success",
    ]  # fmt: skip
    assert runs[("none", "pb1")]["reason"] == "the loop gave no item"
    assert (marks / "pb1").read_text().split() == ["a", "b", "c"]
    assert not (marks / "never").exists()
    report = server2.log_lines(runs[("report", "pb1")]["id"])
    assert [ln["text"] for ln in report] == ["a,b,c"]


def test_ignore_errors_lets_the_later_items_run(fleet: ServerHandle, tmp_path: Path) -> None:
    """With ignore_errors a failed item is marked ignored and the next items run; failed_when
    and changed_when judge each item with the item in scope."""
    book = write(
        tmp_path / "ignore.yml",
        """\
        name: ignore
        hosts: web1
        tasks:
          - name: each
            ignore_errors: true
            loop: [a, b, c]
            shell: echo {{ item }}
            failed_when: item == 'b'
            changed_when: item == 'c'
          - name: next
            shell: echo {{ results.each.failed }} {{ results.each.changed }}
        """,
    )
    result = play(fleet, book, "--format", "json")
    assert result.returncode == 0, result.stdout + result.stderr
    runs = final(json.loads(result.stdout)["runs"])
    each = [runs[(f"each (item={i})", "web1")] for i in "abc"]
    assert [r["state"] for r in each] == ["success", "failed", "success"]
    assert [r["ignored"] for r in each] == [False, True, False]
    assert [r["changed"] for r in each] == [False, False, True]
    assert [ln["text"] for ln in fleet.log_lines(runs[("next", "web1")]["id"])] == ["True True"]
