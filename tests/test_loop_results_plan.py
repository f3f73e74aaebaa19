"""Loops over results, planned: one run per host stands for the task until its items are
rendered on the host (when its needs have ended there); rendering them, and what --check and
--list-tasks show before."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from easytask.errors import PlaybookError
from easytask.inventory import Inventory, load_inventory
from easytask.plan import (
    PlaybookPlan,
    RunKey,
    check_limits,
    check_playbook,
    dumps_check,
    format_check,
    loops,
    plan_playbook,
    render_action,
    task_result,
)
from easytask.plan.loops import run_items
from easytask.playbook import PlaybookErrors, parse_playbook
from tests.support.cli import run_cli

REPO = Path(__file__).resolve().parent.parent

BOOK = """\
    hosts: web
    tasks:
      - name: list users
        command: printf 'root\\nbin\\n'
      - name: greet
        command: echo hello {{ item }}
        loop: "{{ results['list users'].stdout_lines }}"
      - name: after
        shell: echo {{ results.greet.results | map(attribute='item') | join(',') }}
    """


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    """The sample inventory: web1, web2 (web), db1 (db), all in prod."""
    return load_inventory(REPO / "inventory")


def plan_of(tmp_path: Path, inventory: Inventory, text: str, **options: Any) -> PlaybookPlan:
    book = parse_playbook(textwrap.dedent(text), tmp_path / "pb.yml")
    return plan_playbook(book, inventory, **options)


def listed(stdout: str, state: str = "success") -> dict[str, Any]:
    return {"list users": task_result(stdout, "", 0, state)}


def test_a_loop_over_results_is_one_run_per_host_until_it_runs(
    tmp_path: Path, inventory: Inventory
) -> None:
    """The loader takes it; planning makes one run per host named after the task, waiting for
    the task above on its host; the task below waits for that run."""
    plan = plan_of(tmp_path, inventory, BOOK)
    assert plan.task("greet").loop is not None and plan.task("greet").loop.at_run
    greet = plan.run(RunKey("greet", "web1"))
    assert (greet.at_run, greet.item, greet.empty_loop) == (True, None, False)
    assert greet.needs == (RunKey("list users", "web1"),)
    assert greet.results_from == {"list users": (RunKey("list users", "web1"),)}
    after = plan.run(RunKey("after", "web2"))
    assert after.needs == (RunKey("greet", "web2"),)
    assert after.results_from["greet"] == (RunKey("greet", "web2"),)
    assert [r.name for r in plan.runs if r.host == "web1"] == ["list users", "greet", "after"]
    assert not plan.run(RunKey("list users", "web1")).at_run


def test_a_label_over_results_renders_the_loop_when_it_runs(
    tmp_path: Path, inventory: Inventory
) -> None:
    """A label that reads results makes the loop wait too, even over a written list."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web1
        tasks:
          - name: list users
            command: "true"
          - name: greet
            loop: [a, b]
            loop_control: {label: "{{ item }}/{{ results['list users'].rc }}"}
            command: echo {{ item }}
        """)  # fmt: skip
    assert plan.run(RunKey("greet", "web1")).at_run
    items = run_items(plan, "greet", "web1", listed(""))
    assert [(i.value, i.label) for i in items] == [("a", "a/0"), ("b", "b/0")]


def test_the_items_are_rendered_from_the_results_with_labels(
    tmp_path: Path, inventory: Inventory
) -> None:
    """run_items renders the list with the host's results; repeated labels get their place."""
    plan = plan_of(tmp_path, inventory, BOOK)
    items = run_items(plan, "greet", "web1", listed("root\nbin\nroot\n"))
    assert [(i.index, i.value, i.shown) for i in items] == [
        (0, "root", "root"), (1, "bin", "bin"), (2, "root", "root #3"),
    ]  # fmt: skip
    assert run_items(plan, "greet", "web2", listed("")) == []


def test_bad_items_at_run_time_say_what_is_wrong(
    tmp_path: Path, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a list, a template that fails, too many items, an item run named like a task."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web1
        tasks:
          - name: list users
            command: "true"
          - name: text
            loop: "{{ results['list users'].stdout }}"
            command: echo {{ item }}
          - name: missing
            loop: "{{ results['list users'].nothing.lines }}"
            command: echo {{ item }}
          - name: many
            loop: "{{ results['list users'].stdout_lines }}"
            command: echo {{ item }}
          - name: many (item=x)
            command: "true"
        """)  # fmt: skip
    with pytest.raises(PlaybookError) as exc:
        run_items(plan, "text", "web1", listed("root"))
    assert str(exc.value) == (
        f"{tmp_path / 'pb.yml'}:6:5: task 'text' on host 'web1', loop must give a list, "
        "got the text 'root' (write one expression that gives a list, such as "
        '"{{ packages }}" or "{{ text.split() }}")'
    )
    with pytest.raises(PlaybookError, match="task 'missing' on host 'web1', loop: .*nothing"):
        run_items(plan, "missing", "web1", listed("root"))
    with pytest.raises(PlaybookError, match="like another task: rename one"):
        run_items(plan, "many", "web1", listed("x"))
    monkeypatch.setattr(loops, "MAX_LOOP_ITEMS", 2)
    with pytest.raises(PlaybookError, match="gives 3 items, more than 2"):
        run_items(plan, "many", "web1", listed("a\nb\nc"))


def test_check_shows_a_loop_over_results_as_one_line(tmp_path: Path, inventory: Inventory) -> None:
    """--check (text and JSON) shows one line per host saying the items are known when it
    runs; its limits check leaves it for then."""
    plan = plan_of(tmp_path, inventory, BOOK)
    check_limits(plan)
    checked = check_playbook(plan)
    text = format_check(plan, checked)
    assert "  web1: a loop over results: its items are known when it runs\n" in text
    assert "  web1: echo \n" in text  # the task below sees no item yet
    assert "0 errors" in text
    rows = [json.loads(line) for line in dumps_check(checked).splitlines()]
    greet = [r for r in rows if r["task"] == "greet"]
    assert [(r["host"], r["items"], r["line"]) for r in greet] == [
        ("web1", "a loop over results: its items are known when it runs", None),
        ("web2", "a loop over results: its items are known when it runs", None),
    ]


def test_list_tasks_says_the_items_are_known_when_it_runs(tmp_path: Path) -> None:
    book = tmp_path / "site.yml"
    book.write_text("name: site\n" + textwrap.dedent(BOOK))
    code, out = run_cli("play", str(book), "--list-tasks")
    assert code == 0
    assert (
        "      greet\tTAGS: []\tafter list users\tloop {{ results['list users'].stdout_lines }}"
        " (over results: its items are known when it runs)\n"
    ) in out


def test_an_item_renders_its_command_with_its_value(tmp_path: Path, inventory: Inventory) -> None:
    plan = plan_of(tmp_path, inventory, BOOK)
    task = plan.task("greet")
    item = run_items(plan, "greet", "web1", listed("bin"))[0]
    context = plan.context("web1", {}, None, {"item": item.value})
    assert render_action(task, "web1", context).shell_line() == "echo hello bin"


def test_the_loader_checks_the_results_a_loop_reads() -> None:
    """A loop (or its label) reading results of a task it does not need, or of no task, is
    refused at its line, as any other template reading results is."""
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(
            textwrap.dedent("""\
                hosts: all
                tasks:
                  - name: a
                    needs: []
                    shell: x
                  - name: b
                    needs: []
                    loop: "{{ results.a.stdout_lines }}"
                    shell: echo {{ item }}
                  - name: c
                    needs: [a]
                    loop: ["{{ results.a.rc }}", x]
                    loop_control: {label: "{{ results.nope.rc }}"}
                    shell: echo {{ item }}
                """),
            "pb/x.yml",
        )
    assert [str(e) for e in exc.value.errors] == [
        "pb/x.yml:8:11: task 'b' uses results.a but does not need 'a' (add it to 'needs')",
        "pb/x.yml:13:27: task 'c' uses results.nope, but there is no task 'nope'",
    ]
