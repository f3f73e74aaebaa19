"""Planning loops: `loop`/`with_items`/`loop_control` checked, items rendered per host, one run
each in order, the empty loop, bad input refused at file:line, --check and results' shape."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from easytask.errors import PlaybookError
from easytask.inventory import Inventory, load_inventory
from easytask.plan import (
    LoopItem,
    PlaybookPlan,
    RunKey,
    check_playbook,
    dumps_check,
    format_check,
    loop_result,
    loops,
    plan_playbook,
    plan_runs,
    render_action,
    task_result,
)
from easytask.playbook import PlaybookErrors, parse_playbook
from easytask.store.models import Job, Run
from easytask.web.matrix import matrix
from tests.support.cli import run_cli

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    """The sample inventory: web1, web2 (web), db1 (db), all in prod."""
    return load_inventory(REPO / "inventory")


def plan_of(tmp_path: Path, inventory: Inventory, text: str, **options: Any) -> PlaybookPlan:
    book = parse_playbook(textwrap.dedent(text), tmp_path / "pb.yml")
    return plan_playbook(book, inventory, **options)


def errors_of(text: str) -> list[str]:
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(textwrap.dedent(text), "pb/x.yml")
    return [str(e) for e in exc.value.errors]


def names(plan: PlaybookPlan, host: str | None = None) -> list[str]:
    return [r.name for r in plan.runs if host is None or r.host == host]


def line_of(plan: PlaybookPlan, name: str, host: str) -> str:
    run = plan.run(RunKey(name, host))
    task = plan.task(run.task)
    context = plan.context(host, {}, None, plan.item_vars(run))
    return render_action(task, host, context).shell_line()


# -- items become runs ------------------------------------------------------------------------


def test_each_item_is_a_run_in_order_and_the_next_task_waits_for_all(
    tmp_path: Path, inventory: Inventory
) -> None:
    """Items run one after the other on each host; the task below waits for every item."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web
        tasks:
          - name: install
            loop: [nginx, "{{ inventory_hostname }}-tools"]
            shell: echo {{ item }}
          - name: after
            shell: echo {{ results.install.results | length }}
        """)  # fmt: skip
    assert names(plan, "web1") == [
        "install (item=nginx)", "install (item=web1-tools)", "after",
    ]  # fmt: skip
    first, second = (
        RunKey("install (item=nginx)", "web2"),
        RunKey("install (item=web2-tools)", "web2"),
    )
    assert plan.run(first).needs == ()
    assert plan.run(second).needs == (first,)
    assert plan.run(RunKey("after", "web2")).needs == (first, second)
    assert plan.run(RunKey("after", "web2")).results_from == {"install": (first, second)}
    assert line_of(plan, "install (item=web2-tools)", "web2") == "echo web2-tools"
    item = plan.run(second).item
    assert item == LoopItem(1, "web2-tools", "web2-tools", "web2-tools")


def test_a_template_gives_the_list_per_host_with_label_and_loop_var(
    tmp_path: Path, inventory: Inventory
) -> None:
    """`loop: "{{ x }}"` keeps x's list; loop_var renames item; label names the runs."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: prod
        vars:
          users:
            - {name: ann, uid: 1001}
            - {name: "{{ inventory_hostname }}", uid: 1002}
        tasks:
          - name: users
            loop: "{{ users }}"
            loop_control:
              loop_var: user
              label: "{{ user.name }}"
            command: useradd -u {{ user.uid }} {{ user.name }}
          - name: web
            loop: "{{ groups['web'] | map('upper') }}"
            shell: echo {{ item }}
        """)  # fmt: skip
    assert names(plan, "db1") == [
        "users (item=ann)", "users (item=db1)", "web (item=WEB1)", "web (item=WEB2)",
    ]  # fmt: skip
    assert plan.item_vars(plan.run(RunKey("users (item=db1)", "db1"))) == {
        "user": {"name": "db1", "uid": 1002}
    }
    assert line_of(plan, "users (item=db1)", "db1") == "useradd -u 1002 db1"


def test_with_items_spreads_lists_one_level(tmp_path: Path, inventory: Inventory) -> None:
    """with_items, as in Ansible, spreads out lists inside its list (one level); loop does not."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web1
        vars:
          more: [c, [d]]
        tasks:
          - name: old
            with_items: [a, [b], "{{ more }}"]
            shell: echo {{ item }}
          - name: new
            loop: [[1, 2], 3]
            shell: echo {{ item }}
        """)  # fmt: skip
    assert [r.item.value for r in plan.runs if r.task == "old" and r.item] == [
        "a", "b", "c", ["d"],
    ]  # fmt: skip
    assert [r.item.value for r in plan.runs if r.task == "new" and r.item] == [[1, 2], 3]
    assert names(plan)[-2:] == ["new (item=[1, 2])", "new (item=3)"]


def test_an_empty_loop_is_one_skipped_run_and_what_follows_runs(
    tmp_path: Path, inventory: Inventory
) -> None:
    """No item on a host: one run that stands for the task, shown skipped; the next task goes on."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web
        tasks:
          - name: some
            loop: "{{ [inventory_hostname] if inventory_hostname == 'web1' else [] }}"
            shell: echo {{ item }}
          - name: next
            shell: echo next
        """)  # fmt: skip
    assert names(plan) == ["some (item=web1)", "some", "next", "next"]
    empty = plan.run(RunKey("some", "web2"))
    assert empty.empty_loop and empty.item is None
    assert plan.run(RunKey("next", "web2")).needs == (RunKey("some", "web2"),)
    text = format_check(plan, check_playbook(plan))
    assert "  web2: skipped (the loop gave no item)" in text
    assert "  web1 (item=web1): echo web1" in text


def test_same_labels_get_their_place(tmp_path: Path, inventory: Inventory) -> None:
    """Two items with one label still make two runs, the second named with its place."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web1
        tasks:
          - name: t
            loop: [{n: x, v: 1}, {n: x, v: 2}]
            loop_control: {label: "{{ item.n }}"}
            shell: echo {{ item.v }}
        """)  # fmt: skip
    assert names(plan) == ["t (item=x)", "t (item=x #2)"]


def test_run_once_and_run_on_any_loop_once(tmp_path: Path, inventory: Inventory) -> None:
    """A single task loops once in all: on its one host, or as `run_on: any` runs."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: prod
        tasks:
          - {name: once, run_once: true, loop: [1, 2], shell: "echo {{ item }}"}
          - {name: any, run_on: any, loop: [a, b], shell: "echo {{ item }}", needs: []}
        """)  # fmt: skip
    assert [tuple(r.key) for r in plan.runs] == [
        ("once (item=1)", "web1"), ("once (item=2)", "web1"),
        ("any (item=a)", None), ("any (item=b)", None),
    ]  # fmt: skip
    assert plan.run(RunKey("any (item=b)", None)).needs == (RunKey("any (item=a)", None),)


def test_a_secret_never_shows_in_a_label(tmp_path: Path, inventory: Inventory) -> None:
    """A label that would hold a secret variable's value shows **** in its place."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web1
        secrets: [token]
        vars:
          token: s3cr3t-value
        tasks:
          - name: t
            loop: ["{{ token }}", plain]
            shell: echo {{ item }}
        """)  # fmt: skip
    assert names(plan) == ["t (item=****)", "t (item=plain)"]
    assert plan.run(RunKey("t (item=****)", "web1")).item.value == "s3cr3t-value"  # type: ignore[union-attr]


def test_a_left_out_task_does_not_render_its_loop(tmp_path: Path, inventory: Inventory) -> None:
    """--skip-tags leaves a task out before its loop is rendered (a bad loop is not an error)."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web1
        tasks:
          - {name: a, shell: x}
          - {name: b, loop: "{{ nope }}", shell: x, tags: [b]}
        """, skip_tags=("b",))  # fmt: skip
    assert names(plan) == ["a"]


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "line", "message"),
    [
        ('loop: "{{ inventory_hostname }}"', 5, "loop must give a list, got the text 'web1'"),
        ("loop: \"{{ {'a': 1} }}\"", 5, "loop must give a list, got a mapping"),
        ('loop: "{{ nope }}"', 5, "loop: undefined variable 'nope'"),
        ('with_items: "{{ 3 }}"', 5, "with_items must give a list, got a int"),
        ("loop: [1]\n    loop_control: {label: '{{ item.x }}'}", 6, "loop, item 1, label:"),
    ],
)
def test_a_loop_that_gives_no_list_names_file_line_and_task(
    tmp_path: Path, inventory: Inventory, task: str, line: int, message: str
) -> None:
    """Caught when the job is planned (before anything is stored): file:line, task and host."""
    with pytest.raises(PlaybookError) as exc:
        plan_of(
            tmp_path,
            inventory,
            f"hosts: web1\ntasks:\n  - name: t\n    shell: x\n    {task}\n",
        )
    assert exc.value.location is not None
    assert (exc.value.location.path, exc.value.location.line) == (str(tmp_path / "pb.yml"), line)
    assert f"task 't' on host 'web1', {message}" in exc.value.message


def test_a_loop_run_named_like_another_task_is_refused(
    tmp_path: Path, inventory: Inventory
) -> None:
    with pytest.raises(PlaybookError, match="would be named 'a \\(item=x\\)', like another task"):
        plan_of(tmp_path, inventory, """\
            hosts: web1
            tasks:
              - {name: a, loop: [x], shell: x}
              - {name: a (item=x), shell: x}
            """)  # fmt: skip


def test_the_checker_refuses_bad_loops_at_their_line() -> None:
    """Every mistake in loop, with_items and loop_control, with its file:line:col."""
    assert errors_of("""\
        hosts: all
        tasks:
          - name: a
            loop: 5
            shell: x
          - name: b
            loop: not a template
            shell: x
          - name: c
            loop_control: {label: x}
            shell: x
          - name: d
            loop: "{{ results.a.stdout_lines }}"
            shell: x
          - name: e
            with_dict: {a: 1}
            shell: x
          - name: f
            loop: [1]
            with_items: [1]
            shell: x
          - name: g
            loop: ["{{ x"]
            loop_control: {label: 3, loop_var: results, index_var: i}
            shell: x
          - name: h
            loop: [1]
            loop_control: [label]
            shell: x
        """) == [
        "pb/x.yml:4:11: 'loop' of task 'a' must be a list or a template giving one (such as \"{{ packages }}\"), got 5",
        "pb/x.yml:7:11: 'loop' of task 'b' must be a list or a template giving one (such as \"{{ packages }}\"), got 'not a template'",
        "pb/x.yml:10:5: task 'c' has 'loop_control' but no 'loop'",
        "pb/x.yml:16:5: unknown key 'with_dict' in task 'e' (with_dict lookups are not supported: write 'loop' with a list or a template giving one)",
        "pb/x.yml:20:17: task 'f' has both 'loop' and 'with_items' (use 'loop')",
        "pb/x.yml:23:12: invalid template in 'loop' of task 'g': unexpected end of template, expected 'end of print statement'.",
        "pb/x.yml:24:27: 'label' in 'loop_control' of task 'g' must be a non-empty string, got 3",
        "pb/x.yml:24:40: 'loop_var' of 'loop_control' of task 'g': 'results' is reserved",
        "pb/x.yml:24:49: unknown key 'index_var' in 'loop_control' of task 'g' (not supported: loop_control takes 'label' and 'loop_var')",
        "pb/x.yml:28:19: 'loop_control' in task 'h' must be a mapping with 'label' and/or 'loop_var', got a list",
    ]


# -- --check and results ----------------------------------------------------------------------


def test_check_shows_each_item_and_a_loop_results_list(
    tmp_path: Path, inventory: Inventory
) -> None:
    """--check prints a run per item with its label; results.<loop> is a list of items there."""
    plan = plan_of(tmp_path, inventory, """\
        hosts: web1
        tasks:
          - name: pkgs
            loop: [nginx, curl]
            loop_control: {label: "pkg {{ item }}"}
            when: item != 'curl'
            shell: echo {{ item }}
          - name: report
            shell: echo {{ results.pkgs.results | map(attribute='item') | join(',') }}
        """)  # fmt: skip
    checked = check_playbook(plan)
    text = format_check(plan, checked)
    assert "task pkgs (shell) loop\n" in text
    assert "  web1 (item=pkg nginx): echo nginx\n" in text
    assert "  web1 (item=pkg curl): skipped (when: item != 'curl')\n" in text
    assert "  web1: echo nginx,curl\n" in text
    rows = [json.loads(line) for line in dumps_check(checked).splitlines()]
    assert [(r["task"], r.get("item")) for r in rows] == [
        ("pkgs", "pkg nginx"), ("pkgs", "pkg curl"), ("report", None),
    ]  # fmt: skip


def test_loop_result_is_each_item_in_order_then_the_task_state() -> None:
    """results.<loop task>: Ansible's shape, `results` in item order, then state/failed/skipped."""
    a, b, c = (LoopItem(i, v, f"L{v}", f"L{v}") for i, v in enumerate(["x", "y", "z"]))
    ok = task_result("out\n", rc=0)
    failed = task_result("", "bad", rc=3, state="failed")
    skipped = task_result(rc=None, state="skipped")
    result = loop_result([(a, ok), (b, failed), (c, skipped)], "pkg")
    assert [r["item"] for r in result["results"]] == ["x", "y", "z"]
    assert result["results"][1] == {
        **failed, "item": "y", "pkg": "y", "label": "Ly", "index": 1,
    }  # fmt: skip
    assert (result["state"], result["failed"], result["skipped"]) == ("failed", True, False)
    assert loop_result([(a, ok), (b, skipped)])["state"] == "success"
    assert loop_result([(a, skipped)])["state"] == "skipped"
    assert result["changed"] is False
    assert loop_result([(a, task_result(rc=0, changed=True)), (b, ok)])["changed"] is True
    assert loop_result([]) == {
        "results": [], "state": "skipped", "failed": False, "skipped": True, "changed": False,
    }  # fmt: skip


def test_list_tasks_shows_each_loop_as_written(tmp_path: Path) -> None:
    """`play --list-tasks` (no inventory, nothing sent) shows the loop each task has."""
    book = tmp_path / "site.yml"
    book.write_text(
        "name: site\nhosts: all\ntasks:\n"
        "  - {name: a, shell: x, loop: [1, two]}\n"
        "  - name: b\n    shell: x\n    loop: '{{ users }}'\n"
        "    loop_control: {loop_var: u, label: '{{ u.name }}'}\n"
        "  - {name: c, shell: x, with_items: [[1], 2]}\n"
        "  - {name: d, shell: x}\n"
    )
    code, out = run_cli("play", str(book), "--list-tasks")
    assert code == 0
    assert out.endswith(
        "    tasks:\n"
        "      a\tTAGS: []\tat once\tloop [1, two]\n"
        "      b\tTAGS: []\tafter a\tloop {{ users }} as u label {{ u.name }}\n"
        "      c\tTAGS: []\tafter b\twith_items [[1], 2]\n"
        "      d\tTAGS: []\tafter c\n"
    )


def test_the_loops_of_a_job_have_a_time_limit(
    tmp_path: Path, inventory: Inventory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rendering every loop and label of a job is bounded in time as a whole (LOOP_SECONDS)."""
    monkeypatch.setattr(loops, "LOOP_SECONDS", -1.0)
    with pytest.raises(PlaybookError, match="rendering the job's loops took more than -1s"):
        plan_of(tmp_path, inventory, "hosts: web1\ntasks:\n  - {name: t, loop: [1], shell: x}\n")


def test_runs_can_be_added_apart(tmp_path: Path, inventory: Inventory) -> None:
    """plan_playbook(runs=False) then plan_runs (as the server does, in a thread) is the plan."""
    text = "hosts: web\ntasks:\n  - {name: t, loop: [1, 2], shell: x}\n"
    bare = plan_of(tmp_path, inventory, text, runs=False)
    assert bare.runs == ()
    assert plan_runs(bare).runs == plan_of(tmp_path, inventory, text).runs


def test_the_job_page_matrix_folds_items_into_their_task_row() -> None:
    """A loop's item runs (`task (item=label)`) show in their task's row of the job page's
    matrix, one entry per item with its label, each with its latest attempt."""
    tasks = [{"name": "steps", "needs": []}, {"name": "next", "needs": ["steps"], "implied": True}]
    job = Job(id=1, kind="playbook", vars=json.dumps({"tasks": tasks}))
    runs = [
        Run(id=1, job_id=1, task="steps (item=a)", host="web1", state="success"),
        Run(id=2, job_id=1, task="steps (item=b)", host="web1", state="failed"),
        Run(id=3, job_id=1, task="steps (item=b)", host="web1", state="success", attempt=2),
        Run(id=4, job_id=1, task="steps", host="web2", state="skipped"),
        Run(id=5, job_id=1, task="next", host="web1", state="success"),
    ]
    built = matrix(job, runs)
    assert [r["name"] for r in built["rows"]] == ["steps", "next"]
    web1, web2 = built["rows"][0]["cells"]
    assert [(e["label"], e["id"], e["attempts"]) for e in web1] == [("a", 1, 1), ("b", 3, 2)]
    assert [(e["label"], e["state"]) for e in web2] == [("", "skipped")]
