"""Planning playbooks: hosts, serial batches, dependencies, rendering and --check."""

from __future__ import annotations

import json
import shlex
import textwrap
from pathlib import Path
from typing import Any

import pytest

from easytask.errors import NoHostsMatched, SourceLocation, TemplateError, UsageError
from easytask.inventory import Inventory, load_inventory
from easytask.plan import (
    PlaybookPlan,
    RenderedAction,
    RunKey,
    check_playbook,
    dumps_check,
    evaluate_when,
    format_check,
    parse_extra_vars,
    plan_playbook,
    render_action,
    render_command,
    serial_batches,
    stop_after_batch,
    tag_names,
    tag_selected,
    task_result,
)
from easytask.playbook import PlaybookErrors, parse_playbook

REPO = Path(__file__).resolve().parent.parent
CASES = Path(__file__).parent / "cases" / "playbooks"
CHECK_CASES = sorted((CASES / "check").glob("*.yml"))
EXAMPLES = sorted((REPO / "playbooks").glob("*.yml"))
EVIL = "x; touch /tmp/pwned"


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    """The sample inventory: web1, web2 (web), db1 (db), all in prod."""
    return load_inventory(REPO / "inventory")


@pytest.fixture
def book_dir(tmp_path: Path) -> Path:
    """A playbook directory with a script and a file in it."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "run.sh").write_text("echo run\n")
    (tmp_path / "motd").write_text("hi\n")
    return tmp_path


def plan_of(book_dir: Path, inventory: Inventory, text: str, **options: Any) -> PlaybookPlan:
    """Plan a playbook written inline (placed in book_dir) on an inventory."""
    book = parse_playbook(textwrap.dedent(text), book_dir / "pb.yml")
    return plan_playbook(book, inventory, **options)


def needs_of(plan: PlaybookPlan) -> dict[tuple[str, str | None], list[tuple[str, str | None]]]:
    """Each run's key -> the keys it waits for, as plain tuples."""
    return {tuple(r.key): [tuple(k) for k in r.needs] for r in plan.runs}  # type: ignore[misc]


# -- serial -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "serial", "sizes"),
    [
        (10, (), [10]),
        (10, (0,), [10]),
        (10, (3,), [3, 3, 3, 1]),
        (10, ("25%",), [2, 2, 2, 2, 2]),
        (10, ("30%",), [3, 3, 3, 1]),
        (10, (1, "50%"), [1, 5, 4]),
        (10, (1, 2, 3), [1, 2, 3, 3, 1]),
        (10, (1, 0), [1, 9]),
        (3, ("10%",), [1, 1, 1]),
        (10, ("0%",), [1] * 10),
        (5, ("100%",), [5]),
        (2, (5,), [2]),
        (0, (1,), []),
    ],
)
def test_serial_batches(count: int, serial: tuple[int | str, ...], sizes: list[int]) -> None:
    """Batches follow Ansible: percentages of all hosts, rounded down but at least 1; the last repeats."""
    hosts = [f"h{i}" for i in range(count)]
    batches = serial_batches(hosts, serial)
    assert [len(b) for b in batches] == sizes
    assert [h for b in batches for h in b] == hosts


@pytest.mark.parametrize(
    ("failed", "size", "max_fail", "stop"),
    [
        (0, 4, None, False),
        (3, 4, None, False),
        (4, 4, None, True),
        (1, 4, 0, True),
        (0, 4, 0, False),
        (1, 4, 25, False),
        (2, 4, 25, True),
        (4, 4, 100, False),
    ],
)
def test_stop_after_batch(failed: int, size: int, max_fail: float | None, stop: bool) -> None:
    """A play stops when more than max_fail_percentage of a batch failed, or without it when all did."""
    assert stop_after_batch(failed, size, max_fail) is stop


# -- hosts and dependencies -------------------------------------------------------------------


def test_task_hosts_and_limit(book_dir: Path, inventory: Inventory) -> None:
    """Tasks run on the play's hosts or their own pattern, both cut down by --limit."""
    text = """\
        hosts: prod
        tasks:
          - {name: all, shell: x}
          - {name: web, shell: x, hosts: web}
          - {name: nowhere, shell: x, hosts: "db:&web"}
          - {name: other, shell: x, hosts: "~nomatch.*"}
        """
    plan = plan_of(book_dir, inventory, text)
    assert plan.hosts == ("web1", "web2", "db1")
    assert {t.name: t.hosts for t in plan.tasks} == {
        "all": ("web1", "web2", "db1"), "web": ("web1", "web2"), "nowhere": (), "other": (),
    }  # fmt: skip
    limited = plan_of(book_dir, inventory, text, limit="web2,db1")
    assert limited.hosts == ("web2", "db1")
    assert limited.task("web").hosts == ("web2",)
    assert [tuple(r.key) for r in limited.runs] == [
        ("all", "web2"),
        ("all", "db1"),
        ("web", "web2"),
    ]


def test_no_host_left_is_an_error_at_the_hosts_line(book_dir: Path, inventory: Inventory) -> None:
    """A play whose hosts are all outside --limit (or match nothing) fails, naming the hosts line."""
    text = "name: x\nhosts: web\ntasks: [{name: a, shell: x}]\n"
    with pytest.raises(NoHostsMatched) as exc:
        plan_of(book_dir, inventory, text, limit="db1")
    assert (
        str(exc.value) == f"{book_dir / 'pb.yml'}:2:1: no host of the play (web) is in --limit db1"
    )
    with pytest.raises(NoHostsMatched) as exc:
        plan_of(book_dir, inventory, "hosts: nope\ntasks: [{name: a, shell: x}]\n")
    assert str(exc.value) == f"{book_dir / 'pb.yml'}:1:1: 'nope' matches no host or group"


def test_needs_on_the_same_host(book_dir: Path, inventory: Inventory) -> None:
    """A task on a host waits for the task it needs on that same host only."""
    plan = plan_of(book_dir, inventory, """\
        hosts: web
        tasks:
          - {name: b, shell: x, needs: a}
          - {name: a, shell: x, needs: []}
        """)  # fmt: skip
    assert [t.name for t in plan.tasks] == ["a", "b"]
    assert needs_of(plan) == {
        ("a", "web1"): [], ("a", "web2"): [],
        ("b", "web1"): [("a", "web1")], ("b", "web2"): [("a", "web2")],
    }  # fmt: skip


def test_needs_across_hosts_once_and_any(book_dir: Path, inventory: Inventory) -> None:
    """A needed task that does not run on the host is waited for wherever it runs."""
    plan = plan_of(book_dir, inventory, """\
        hosts: web
        tasks:
          - {name: backup, shell: x, hosts: db}
          - {name: pick, shell: x, hosts: prod, run_on: any, needs: []}
          - {name: first, shell: x, run_once: true, needs: []}
          - {name: web, shell: x, needs: [backup, pick, first]}
          - {name: report, shell: x, run_once: true, needs: web}
          - {name: any, shell: x, run_on: any, needs: [first]}
        """)  # fmt: skip
    assert needs_of(plan) == {
        ("backup", "db1"): [],
        ("pick", None): [],
        ("first", "web1"): [],
        ("web", "web1"): [("backup", "db1"), ("pick", None), ("first", "web1")],
        ("web", "web2"): [("backup", "db1"), ("pick", None), ("first", "web1")],
        ("report", "web1"): [("web", "web1"), ("web", "web2")],
        ("any", None): [("first", "web1")],
    }
    assert plan.run(RunKey("pick", None)).candidates == ("web1", "web2", "db1")
    assert plan.run(RunKey("report", "web1")).results_from == {
        "web": (RunKey("web", "web1"),), "pick": (RunKey("pick", None),),
        "first": (RunKey("first", "web1"),),
    }  # fmt: skip


def test_results_come_from_the_same_host_or_the_single_run(
    book_dir: Path, inventory: Inventory
) -> None:
    """results.<task> is the needed task's run on the same host, else its one run, else absent."""
    plan = plan_of(book_dir, inventory, """\
        hosts: web
        tasks:
          - {name: local, shell: x}
          - {name: backup, shell: x, hosts: db}
          - {name: pick, shell: x, run_on: any}
          - {name: use, shell: x, needs: [local, backup, pick]}
          - {name: later, shell: x, needs: use}
          - {name: any, shell: x, run_on: any, needs: [local, pick]}
        """)  # fmt: skip
    assert plan.run(RunKey("use", "web2")).results_from == {
        "local": (RunKey("local", "web2"),), "pick": (RunKey("pick", None),),
    }  # fmt: skip
    assert plan.run(RunKey("later", "web1")).results_from == {
        "local": (RunKey("local", "web1"),), "pick": (RunKey("pick", None),),
        "use": (RunKey("use", "web1"),),
    }  # fmt: skip
    assert plan.run(RunKey("any", None)).results_from == {"pick": (RunKey("pick", None),)}


def test_batches_of_runs(book_dir: Path, inventory: Inventory) -> None:
    """Runs take their host's batch, or a later one when they wait for a run of a later batch."""
    plan = plan_of(book_dir, inventory, """\
        hosts: prod
        serial: 1
        tasks:
          - {name: a, shell: x}
          - {name: only-db, shell: x, hosts: db1}
          - {name: b, shell: x, needs: only-db}
          - {name: once, shell: x, run_once: true, needs: []}
          - {name: last, shell: x, run_once: true, needs: a}
        """)  # fmt: skip
    assert plan.batches == (("web1",), ("web2",), ("db1",))
    assert {(r.task, r.host): r.batch for r in plan.runs} == {
        ("a", "web1"): 0, ("a", "web2"): 1, ("a", "db1"): 2,
        ("only-db", "db1"): 2,
        ("b", "web1"): 2, ("b", "web2"): 2, ("b", "db1"): 2,
        ("once", "web1"): 0, ("last", "web1"): 2,
    }  # fmt: skip


def test_dependency_order_keeps_file_order_among_equals(
    book_dir: Path, inventory: Inventory
) -> None:
    """Tasks come after what they need; otherwise in the order they are written."""
    plan = plan_of(book_dir, inventory, """\
        hosts: db
        tasks:
          - {name: d, shell: x, needs: [c]}
          - {name: a, shell: x, needs: []}
          - {name: c, shell: x, needs: [b]}
          - {name: b, shell: x, needs: []}
          - {name: e, shell: x, needs: []}
        """)  # fmt: skip
    assert [t.name for t in plan.tasks] == ["a", "b", "c", "d", "e"]


def test_tasks_without_needs_run_top_to_bottom(book_dir: Path, inventory: Inventory) -> None:
    """A task without `needs` waits for the task above it on the same host, as in Ansible;
    `needs: []` starts at once and written `needs` wait for exactly what they name."""
    plan = plan_of(book_dir, inventory, """\
        hosts: web
        tasks:
          - {name: a, shell: x}
          - {name: b, shell: x}
          - {name: side, shell: x, needs: []}
          - {name: c, shell: x, needs: a}
          - {name: d, shell: x}
        """)  # fmt: skip
    assert needs_of(plan) == {
        ("a", "web1"): [], ("a", "web2"): [],
        ("b", "web1"): [("a", "web1")], ("b", "web2"): [("a", "web2")],
        ("side", "web1"): [], ("side", "web2"): [],
        ("c", "web1"): [("a", "web1")], ("c", "web2"): [("a", "web2")],
        ("d", "web1"): [("c", "web1")], ("d", "web2"): [("c", "web2")],
    }  # fmt: skip
    assert [(t.name, t.needs_implied) for t in plan.tasks] == [
        ("a", False), ("b", True), ("side", False), ("c", False), ("d", True),
    ]  # fmt: skip


def test_an_implied_order_that_closes_a_cycle_says_so(book_dir: Path, inventory: Inventory) -> None:
    """`needs` on a task further down meets the implied order: the error says how to break it."""
    with pytest.raises(PlaybookErrors) as exc:
        plan_of(book_dir, inventory, """\
            hosts: web
            tasks:
              - {name: b, shell: x, needs: a}
              - {name: a, shell: x}
            """)  # fmt: skip
    assert (
        "needs cycle: b -> a -> b ('a' has no 'needs', so it waits for the task above it;"
        in str(exc.value)
    )


def test_planned_task_settings(book_dir: Path, inventory: Inventory) -> None:
    """Planned tasks carry their settings; retries wait retry_delay times backoff^(n-2)."""
    plan = plan_of(book_dir, inventory, """\
        hosts: db
        forks: 3
        max_fail_percentage: 20
        defaults: {timeout: 1m, retries: 3, retry_delay: 10s, retry_backoff: 2}
        tasks: [{name: a, shell: x, timeout: 5s}]
        """)  # fmt: skip
    task = plan.task("a")
    assert (task.timeout, task.retries, task.retry_delay, task.retry_backoff) == (5, 3, 10, 2)
    assert [task.retry_wait(n) for n in (2, 3, 4)] == [10, 20, 40]
    assert (plan.forks, plan.max_fail_percentage, plan.connection("db1")) == (3, 20, "agent")


# -- variables and rendering ------------------------------------------------------------------


def test_context_precedence(book_dir: Path, inventory: Inventory) -> None:
    """Inventory vars < play vars < extra vars; magic vars and playbook_dir are there too."""
    plan = plan_of(
        book_dir, inventory, """\
        hosts: web
        vars: {tier: play-tier, env: "{{ tier }}-{{ http_port }}"}
        tasks: [{name: a, shell: x}]
        """, extra_vars={"env": "extra"},
    )  # fmt: skip
    web1 = plan.context("web1")
    assert (web1["http_port"], web1["tier"], web1["env"], web1["deploy_user"]) == (
        8081, "play-tier", "extra", "deploy",
    )  # fmt: skip
    assert (web1["inventory_hostname"], web1["group_names"], web1["playbook_dir"]) == (
        "web1", ["prod", "web"], str(book_dir),
    )  # fmt: skip
    assert web1["ansible_play_hosts"] == ["web1", "web2"]
    assert web1["results"] == {}
    no_extra = plan_of(
        book_dir,
        inventory,
        "hosts: web\nvars: {env: '{{ tier }}-{{ http_port }}'}\ntasks: [{name: a, shell: x}]\n",
    )
    assert no_extra.context("web2")["env"] == "web-8080"


@pytest.mark.parametrize(
    ("task", "line"),
    [
        ("command: echo {{ v }}", "echo 'x;' touch /tmp/pwned"),
        ("command: echo {{ v | quote }}", "echo 'x; touch /tmp/pwned'"),
        ("command: [echo, '{{ v }}', $HOME]", "echo 'x; touch /tmp/pwned' '$HOME'"),
        ("command: echo 'a  b' \"$HOME\"", "echo 'a  b' '$HOME'"),
        ("shell: echo {{ v | quote }} | wc -c", "echo 'x; touch /tmp/pwned' | wc -c"),
        ("shell: echo $HOME", "echo $HOME"),
        (
            "shell: echo {{ results.prev.stdout | quote }}\n    needs: prev",
            "echo 'x; touch /tmp/pwned'",
        ),
        (
            "shell: echo hi\n    env: {A: '{{ v }}', B: 2}\n    cwd: /tmp/a b",
            "cd '/tmp/a b' || exit 1; export A='x; touch /tmp/pwned' B=2; echo hi",
        ),
        (
            "shell: |\n      echo one\n      echo two\n    cwd: /tmp",
            "cd /tmp || exit 1\necho one\necho two\n",
        ),
        (
            "script: scripts/run.sh --name {{ v | quote }}",
            "/remote/run.sh --name 'x; touch /tmp/pwned'",
        ),
        ("script: scripts/run.sh", "/remote/run.sh"),
        (
            "script: {path: scripts/run.sh, args: ['{{ v }}', -x]}",
            "/remote/run.sh 'x; touch /tmp/pwned' -x",
        ),
    ],
)
def test_render_command(book_dir: Path, inventory: Inventory, task: str, line: str) -> None:
    """Commands run without a shell stay inert; shell text is the user's; `quote` keeps values whole."""
    text = f"hosts: web\nvars: {{v: {json.dumps(EVIL)}}}\ntasks:\n  - {{name: prev, shell: x}}\n  - name: t\n    {task}\n"
    plan = plan_of(book_dir, inventory, text)
    context = plan.context("web1", {"prev": task_result(EVIL + "\n")})
    assert render_command(plan.task("t"), "web1", context, script_path="/remote/run.sh") == line


def test_rendered_command_keeps_a_value_one_word(book_dir: Path, inventory: Inventory) -> None:
    """Whatever a quoted variable holds, the shell sees it as one word."""
    plan = plan_of(
        book_dir,
        inventory,
        "hosts: web\ntasks:\n  - name: t\n    shell: printf %s {{ v | quote }}\n",
        extra_vars={"v": EVIL},
    )
    line = render_command(plan.task("t"), "web1", plan.context("web1"))
    assert shlex.split(line) == ["printf", "%s", EVIL]


def test_render_action_of_a_copy_and_a_script(book_dir: Path, inventory: Inventory) -> None:
    """A copy gives its local source, rendered target and mode; a script its path and arguments."""
    plan = plan_of(book_dir, inventory, """\
        hosts: web
        tasks:
          - {name: c, copy: {src: motd, dest: "/etc/motd.{{ inventory_hostname }}", mode: "0644"}}
          - {name: s, script: scripts/run.sh -v}
        """)  # fmt: skip
    copy = render_action(plan.task("c"), "web2", plan.context("web2"))
    assert copy == RenderedAction(
        "copy", src=str(book_dir / "motd"), dest="/etc/motd.web2", mode="0644"
    )
    with pytest.raises(ValueError, match="no command line"):
        copy.shell_line()
    script = render_action(plan.task("s"), "web1", plan.context("web1"))
    assert (script.src, script.command) == (str(book_dir / "scripts" / "run.sh"), "-v")
    with pytest.raises(ValueError, match="script_path"):
        script.shell_line()


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("shell: echo {{ nope }}", "task 't' on host 'web1': undefined variable 'nope'"),
        (
            "command: echo {{ q }}",
            "task 't' on host 'web1': the command cannot be split into words: No closing quotation",
        ),
        ("command: '{{ empty }}'", "task 't' on host 'web1': the command is empty"),
        (
            "shell: x\n    cwd: '{{ nope }}'",
            "task 't' on host 'web1', cwd: undefined variable 'nope'",
        ),
        (
            "shell: x\n    env: {A: '{{ nope }}'}",
            "task 't' on host 'web1', env A: undefined variable 'nope'",
        ),
        (
            "shell: '{{ \"\".__class__ }}'",
            "task 't' on host 'web1': unsafe access to attribute '__class__' is not allowed in a template",
        ),
    ],
)
def test_render_errors_name_task_and_host(
    book_dir: Path, inventory: Inventory, task: str, message: str
) -> None:
    """A template that fails at run time says which task on which host."""
    text = f"hosts: web\nvars: {{q: '\"', empty: ''}}\ntasks:\n  - name: t\n    {task}\n"
    plan = plan_of(book_dir, inventory, text)
    with pytest.raises(TemplateError) as exc:
        render_command(plan.task("t"), "web1", plan.context("web1"))
    assert str(exc.value) == message


@pytest.mark.parametrize(
    ("when", "results", "expected"),
    [
        (None, {}, True),
        ("tier == 'web'", {}, True),
        ("http_port > 8080", {}, True),
        ("'db' in group_names", {}, False),
        ("results.a.rc == 0", {"a": task_result(rc=0)}, True),
        ("results.a.skipped", {"a": task_result(state="skipped")}, True),
        ("results.a.stdout_lines | length == 2", {"a": task_result("x\ny\n", rc=0)}, True),
    ],
)
def test_evaluate_when(
    book_dir: Path, inventory: Inventory, when: str | None, results: dict[str, Any], expected: bool
) -> None:
    """`when` is evaluated per host with that host's variables and the results before it."""
    condition = f"\n    when: {json.dumps(when)}" if when else ""
    text = f"hosts: web\ntasks:\n  - {{name: a, shell: x}}\n  - name: t\n    shell: x\n    needs: a{condition}\n"
    plan = plan_of(book_dir, inventory, text)
    assert evaluate_when(plan.task("t"), "web1", plan.context("web1", results)) is expected


def test_task_result() -> None:
    """A result holds output without its final newline, its lines, the exit code and the state."""
    assert task_result("a\nb\n", "oops\n", 1, "failed") == {
        "stdout": "a\nb", "stderr": "oops", "stdout_lines": ["a", "b"], "stderr_lines": ["oops"],
        "rc": 1, "state": "failed", "failed": True, "skipped": False, "changed": False,
    }  # fmt: skip
    assert task_result(state="skipped")["skipped"] is True
    assert task_result(changed=True)["changed"] is True


# -- extra vars -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["a=1"], {"a": "1"}),
        (["a=1 b='two words' c="], {"a": "1", "b": "two words", "c": ""}),
        (["a=1", "a=2"], {"a": "2"}),
        (["x=a=b"], {"x": "a=b"}),
        (['{"n": 1, "l": [1, 2]}'], {"n": 1, "l": [1, 2]}),
        (["{n: 1, flag: true}"], {"n": 1, "flag": True}),
        (["@vars.yml", "keep=3"], {"keep": "3", "name": "x"}),
        (["@empty.yml"], {}),
    ],
)
def test_parse_extra_vars(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: list[str], expected: dict[str, Any]
) -> None:
    """-e takes key=value pairs (text), @file.yml and JSON/YAML mappings; later ones win."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vars.yml").write_text("keep: 7\nname: x\n")
    (tmp_path / "empty.yml").write_text("# nothing\n")
    assert parse_extra_vars(values) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("novalue", "-e 'novalue': expected key=value, @file.yml or a JSON mapping"),
        ("=x", "-e '=x': expected key=value, @file.yml or a JSON mapping"),
        ("a-b=1", "-e 'a-b=1': invalid variable name 'a-b'"),
        ("results=1", "-e 'results=1': the variable name 'results' is reserved"),
        ("a='x", '-e "a=\'x": No closing quotation'),
        ("[1, 2]", "-e: extra vars must be a mapping"),
        ("{a: 1, a: 2}", "-e: duplicate key 'a' (first at line 1)"),
        ("{a: [}", "-e: invalid YAML: did not find expected node content"),
        ("@missing.yml", "-e @missing.yml: cannot read the file: No such file or directory"),
        ("@dup.yml", "dup.yml:2:1: -e @dup.yml: duplicate key 'a' (first at line 1)"),
        ("@bad.yml", "bad.yml:3:1: -e @bad.yml: invalid YAML: could not find expected ':'"),
        ("@list.yml", "list.yml:1:1: -e @list.yml: extra vars must be a mapping"),
        ("@name.yml", "name.yml:2:1: -e @name.yml: invalid variable name '2x'"),
    ],
)
def test_parse_extra_vars_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    """Bad -e values are usage errors, with file:line for files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dup.yml").write_text("a: 1\na: 2\n")
    (tmp_path / "bad.yml").write_text("a: 1\nb\nc: 2\n")
    (tmp_path / "list.yml").write_text("- 1\n")
    (tmp_path / "name.yml").write_text("ok: 1\n2x: 2\n")
    with pytest.raises(UsageError) as exc:
        parse_extra_vars([value])
    assert str(exc.value) == message
    assert exc.value.exit_code == 2


def test_extra_var_named_results_is_refused(book_dir: Path, inventory: Inventory) -> None:
    """`results` is reserved for task output, also when passed straight to the planner."""
    with pytest.raises(UsageError, match="reserved"):
        plan_of(
            book_dir,
            inventory,
            "hosts: web\ntasks: [{name: a, shell: x}]\n",
            extra_vars={"results": 1},
        )


# -- --check ----------------------------------------------------------------------------------


def _options(path: Path) -> tuple[str | None, list[str]]:
    limit, extra = None, []
    for line in path.read_text().splitlines():
        if line.startswith("# limit:"):
            limit = line.split(":", 1)[1].strip()
        elif line.startswith("# extra:"):
            extra.append(line.split(":", 1)[1].strip())
    return limit, extra


def _check(path: Path, shown: Path, inventory: Inventory) -> str:
    limit, extra = _options(path)
    book = parse_playbook(path.read_text(), shown)
    plan = plan_playbook(book, inventory, extra_vars=parse_extra_vars(extra), limit=limit)
    return format_check(plan, check_playbook(plan)) + "\n"


@pytest.mark.parametrize("path", CHECK_CASES, ids=lambda p: p.name)
def test_check_cases(path: Path, inventory: Inventory, monkeypatch: pytest.MonkeyPatch) -> None:
    """--check prints each run's rendered line, skips, run-time conditions and errors (golden files)."""
    monkeypatch.chdir(CASES)
    expected = path.with_suffix(".txt").read_text()
    assert _check(path, path.relative_to(CASES), inventory) == expected


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_check_examples(path: Path, inventory: Inventory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The example playbooks plan and render on the sample inventory as their golden files show."""
    monkeypatch.chdir(REPO)
    expected = (CASES / "check" / "examples" / path.with_suffix(".txt").name).read_text()
    output = _check(path, path.relative_to(REPO), inventory)
    assert output == expected
    assert output.endswith(", 0 errors\n")


def test_check_placeholders_for_results(book_dir: Path, inventory: Inventory) -> None:
    """In --check, results.<task> renders as a placeholder, and `when` on results is left open."""
    plan = plan_of(book_dir, inventory, """\
        hosts: db
        tasks:
          - {name: a, shell: x}
          - name: b
            needs: a
            when: results.a.rc == 0
            shell: echo {{ results.a.stdout | quote }} {{ results['a'].stdout_lines[0] }} {{ results.a }}
        """)  # fmt: skip
    checked = check_playbook(plan)
    assert [(c.run.task, c.when, c.line) for c in checked] == [
        ("a", True, "x"),
        ("b", None, "echo '<results of a.stdout>' <results of a.stdout_lines[0]> <results of a>"),
    ]
    rows = [json.loads(line) for line in dumps_check(checked).splitlines()]
    assert rows[1] == {
        "task": "b", "host": "db1", "candidates": ["db1"], "batch": 0, "needs": [["a", "db1"]],
        "line": checked[1].line, "when": None, "error": None,
    }  # fmt: skip


def test_check_keeps_errors_per_run(book_dir: Path, inventory: Inventory) -> None:
    """Rendering errors in --check are kept per run, without repeating the task and host."""
    plan = plan_of(
        book_dir, inventory, "hosts: web\ntasks: [{name: a, shell: 'echo {{ nope }}'}]\n"
    )
    assert [(c.host, c.error) for c in check_playbook(plan)] == [
        ("web1", "undefined variable 'nope'"), ("web2", "undefined variable 'nope'"),
    ]  # fmt: skip
    assert plan.playbook.task("a").location == SourceLocation(str(book_dir / "pb.yml"), 2, 9)


@pytest.mark.parametrize(
    ("task_tags", "tags", "skip", "runs"),
    [
        ((), (), (), True),
        (("web",), (), (), True),
        (("never",), (), (), False),
        (("never", "debug"), ("debug",), (), True),
        (("web",), ("db",), (), False),
        (("web", "db"), ("db",), (), True),
        (("always",), ("db",), (), True),
        (("always",), ("db",), ("always",), False),
        (("web",), (), ("web",), False),
        (("web",), ("web",), ("web",), False),
        ((), ("untagged",), (), True),
        (("web",), ("untagged",), (), False),
        (("web",), ("tagged",), (), True),
        ((), ("tagged",), (), False),
        (("web",), ("all",), (), True),
        (("never",), ("all",), (), False),
        ((), (), ("untagged",), False),
        (("web",), (), ("tagged",), False),
    ],
)
def test_tag_selection_follows_ansible(
    task_tags: tuple[str, ...], tags: tuple[str, ...], skip: tuple[str, ...], runs: bool
) -> None:
    """--tags/--skip-tags: skip wins; always, never, all, tagged and untagged as in Ansible."""
    assert tag_selected(task_tags, tags, skip) is runs


def test_tasks_left_out_by_tags_have_no_runs_and_keep_the_order(
    book_dir: Path, inventory: Inventory
) -> None:
    """A task left out by --tags has no runs; the task below it still waits for the one above."""
    plan = plan_of(book_dir, inventory, """\
        hosts: web
        tasks:
          - {name: a, shell: x, tags: deploy}
          - {name: b, shell: x, tags: [debug]}
          - {name: c, shell: x, tags: "deploy, check"}
        """, tags=("deploy",))  # fmt: skip
    assert [t.hosts for t in plan.tasks] == [("web1", "web2"), (), ("web1", "web2")]
    assert needs_of(plan) == {
        ("a", "web1"): [], ("a", "web2"): [],
        ("c", "web1"): [("a", "web1")], ("c", "web2"): [("a", "web2")],
    }  # fmt: skip
    assert plan.tasks[2].task.tags == ("deploy", "check")
    skipped = plan_of(
        book_dir, inventory, "hosts: web\ntasks: [{name: a, shell: x, tags: x}]\n", skip_tags=("x",)
    )
    assert skipped.runs == ()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a,b c", "--tags: bad tag 'b c' (letters, digits and . _ - only)"),
        ("a,,b", "--tags: bad tag '' (letters, digits and . _ - only)"),
        (["a", 3], "--tags must be tag names separated by commas, or a list of them"),
        ({"a": 1}, "--tags must be tag names separated by commas, or a list of them"),
    ],
)
def test_bad_tag_options_are_refused(value: Any, message: str) -> None:
    with pytest.raises(UsageError) as exc:
        tag_names(value, "--tags")
    assert str(exc.value) == message
    assert tag_names(" a, b,a", "--tags") == ("a", "b")
    assert tag_names(None, "--tags") == ()


def test_adhoc_limit_extra_vars_and_user(inventory: Inventory) -> None:
    """plan_adhoc: --limit keeps hosts of the pattern, -e renders per host, -u is checked."""
    from easytask.plan import plan_adhoc

    runs = plan_adhoc(inventory, "prod", "echo {{ x }} {{ inventory_hostname }}", limit="web")
    assert [(r.host, r.command) for r in runs] == [
        ("web1", "echo {{ x }} {{ inventory_hostname }}"),
        ("web2", "echo {{ x }} {{ inventory_hostname }}"),
    ]
    rendered = plan_adhoc(
        inventory, "db", "echo {{ x }} {{ inventory_hostname }}", extra_vars={"x": 1}
    )
    assert [r.command for r in rendered] == ["echo 1 db1"]
    with pytest.raises(NoHostsMatched, match="no host of 'db' is in --limit 'web'"):
        plan_adhoc(inventory, "db", "true", limit="web")
    with pytest.raises(UsageError, match="is the SSH user of agentless hosts; db1 run"):
        plan_adhoc(inventory, "db", "true", user="deploy")
    with pytest.raises(UsageError, match="'-rf' is not a user name"):
        plan_adhoc(inventory, "db", "true", user="-rf")
    with pytest.raises(TemplateError):
        plan_adhoc(inventory, "db", "echo {{ nope }}", extra_vars={})


def test_global_options_after_the_subcommand_move_before_it() -> None:
    from easytask.cli.main import hoist_globals

    assert hoist_globals(["run", "all", "--url", "U", "-a", "x", "--token=T"]) == [
        "--url", "U", "--token=T", "run", "all", "-a", "x",
    ]  # fmt: skip
    assert hoist_globals(["--url", "U", "runs"]) == ["--url", "U", "runs"]
    assert hoist_globals([]) == []
