"""Judging a playbook run's end: failed_when, changed_when, ignore_errors (pure)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from easytask.inventory import load_inventory
from easytask.plan import check_playbook, format_check, plan_playbook
from easytask.plan.outcome import (
    EXPRESSION_TEXT,
    ResultScope,
    default_changed,
    ignored,
    judge,
    judged,
    result_vars,
)
from easytask.playbook import PlaybookErrors, Task, parse_playbook
from easytask.templating import Vars


@pytest.fixture(autouse=True)
def playbook_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A playbook directory `pb/` with a file a copy task can send."""
    (tmp_path / "pb").mkdir()
    (tmp_path / "pb" / "x.yml").write_text("x\n")
    monkeypatch.chdir(tmp_path)


def task_of(keys: str, action: str = "shell: run") -> Task:
    """The one task of a playbook whose task has these extra keys (YAML lines)."""
    extra = textwrap.indent(textwrap.dedent(keys).strip(), "    ") if keys.strip() else ""
    text = f"name: p\nhosts: all\ntasks:\n  - name: t\n    {action}\n{extra}\n"
    return parse_playbook(text, "pb/x.yml").tasks[0]


def run_judge(task: Task, rc: int | None, stdout: str = "", stderr: str = "", **kw: Any) -> Any:
    state = kw.pop("state", "success" if rc == 0 else "failed")
    reason = kw.pop("reason", "" if rc == 0 else f"exit code {rc}")
    context = kw.pop("context", Vars({"limit": 3, "word": "{{ 'ERR' ~ 'OR' }}"}))
    return judge(
        task, "web1", context, state=state, reason=reason, rc=rc, stdout=stdout, stderr=stderr, **kw
    )


@pytest.mark.parametrize(
    ("keys", "rc", "stdout", "state", "changed"),
    [
        ("failed_when: false", 1, "", "success", True),
        ("failed_when: \"'ERROR' in stdout\"", 0, "all fine\nERROR: disk\n", "failed", False),
        ("failed_when: \"'ERROR' in stdout\"", 3, "all fine\n", "success", True),
        ("failed_when: rc > limit", 2, "", "success", True),
        ("failed_when: rc > limit", 4, "", "failed", False),
        ("failed_when: word in stdout", 0, "an ERROR", "failed", False),
        ("failed_when: ['rc != 0', \"'fatal' in stderr\"]", 1, "", "success", True),
        ("failed_when: true", 0, "", "failed", False),
        ("failed_when: stdout_lines | length > 2", 0, "a\nb\nc\n", "failed", False),
        ("changed_when: false", 0, "", "success", False),
        ("changed_when: \"'created' in stdout\"", 0, "user created", "success", True),
        ("changed_when: rc == 2\nfailed_when: rc not in [0, 2]", 2, "", "success", True),
        ("changed_when: rc == 2\nfailed_when: rc not in [0, 2]", 0, "", "success", False),
        ("changed_when: rc == 2\nfailed_when: rc not in [0, 2]", 1, "", "failed", False),
        ("changed_when: true", 1, "", "failed", True),
    ],
)
def test_expressions_decide_state_and_changed(
    keys: str, rc: int, stdout: str, state: str, changed: bool
) -> None:
    """failed_when replaces the exit code's verdict; changed_when sets `changed`."""
    verdict = run_judge(task_of(keys), rc, stdout)
    assert (verdict.state, verdict.changed, verdict.error) == (state, changed, False)


def test_a_list_means_and() -> None:
    """A list of failed_when expressions fails the run only when all of them hold."""
    task = task_of("failed_when:\n  - rc != 0\n  - \"'fatal' in stderr\"")
    assert task.failed_when == "(rc != 0) and ('fatal' in stderr)"
    assert run_judge(task, 1, stderr="fatal: x").state == "failed"
    assert run_judge(task, 1, stderr="warning").state == "success"


def test_reasons_name_the_rc_and_the_expression() -> None:
    """The reason and the timeline notes say the exit code and why the run was judged so."""
    ok = run_judge(task_of("failed_when: rc > 5"), 1)
    assert ok.reason == "exit code 1, ok by failed_when rc > 5 (false)"
    assert ok.notes == (("failed_when", "failed_when rc > 5 is false (exit code 1): success"),)
    quiet = run_judge(task_of("changed_when: rc == 2"), 0)
    assert quiet.notes == (
        ("changed_when", "changed_when rc == 2 is false (exit code 0): not changed"),
    )
    bad = run_judge(task_of("failed_when: \"'ERROR' in stdout\""), 0, "ERROR")
    assert bad.reason == "failed_when 'ERROR' in stdout is true (exit code 0)"
    assert bad.notes[0][1].endswith(": failed")


def test_an_unchanged_verdict_keeps_the_reason() -> None:
    """A success that stays a success keeps its reason (a copy's `changed`, say)."""
    task = task_of("failed_when: false", action="copy: {src: x.yml, dest: /tmp/x}")
    verdict = run_judge(task, None, state="success", reason="unchanged")
    assert (verdict.state, verdict.reason, verdict.changed) == ("success", "unchanged", False)


def test_an_expression_error_fails_the_run_and_names_task_and_expression() -> None:
    """An expression that cannot be evaluated fails the run, naming task, host and expression."""
    verdict = run_judge(task_of("failed_when: rc > nothing_here"), 0)
    assert verdict.state == "failed" and verdict.error
    assert verdict.reason == (
        "task 't' on host 'web1', failed_when 'rc > nothing_here': "
        "undefined variable 'nothing_here'"
    )
    bad = run_judge(task_of("changed_when: stdout.nope()"), 0)
    assert bad.error and "changed_when 'stdout.nope()'" in bad.reason


def test_expressions_are_sandboxed_and_bounded() -> None:
    """The expressions run in the sandbox: no unsafe attributes, no unbounded work."""
    unsafe = run_judge(task_of("failed_when: stdout.__class__.__mro__ | length > 0"), 0)
    assert unsafe.error and "unsafe" in unsafe.reason
    huge = run_judge(task_of("failed_when: (stdout * 100000000) | length > 0"), 0, "xxxxxxxxxx")
    assert huge.error and "limit" in huge.reason


def test_a_bounded_view_is_said_in_the_notes() -> None:
    """When the output was cut for the expressions, the timeline says what they saw."""
    verdict = run_judge(task_of("failed_when: false"), 0, "x", cut=True)
    assert f"the first {EXPRESSION_TEXT} characters" in verdict.notes[0][1]


@pytest.mark.parametrize(
    ("keys", "state", "rc", "expected"),
    [
        ("failed_when: false", "success", 0, True),
        ("failed_when: false", "failed", 1, True),
        ("failed_when: false", "failed", None, False),  # failed before it gave an exit code
        ("failed_when: false", "terminated", None, False),
        ("failed_when: false", "unreachable", None, False),
        ("", "failed", 1, False),  # no expressions: nothing to judge
    ],
)
def test_which_runs_are_judged(keys: str, state: str, rc: int | None, expected: bool) -> None:
    """Only a run that ran to an exit code (or succeeded) goes through the expressions."""
    assert judged(task_of(keys), state, rc) is expected


def test_ignored_covers_failures_not_playbook_errors_nor_other_ends() -> None:
    """ignore_errors goes past a failed run, not an expression error, unreachable or killed."""
    task = task_of("ignore_errors: true")
    assert ignored(task, "failed")
    assert not ignored(task, "failed", error=True)
    assert not ignored(task, "unreachable") and not ignored(task, "terminated")
    assert not ignored(task_of(""), "failed")


def test_default_changed_is_ansible_s() -> None:
    """Without changed_when: a command that succeeded changed something; a copy if it wrote."""
    assert default_changed(task_of(""), "success", "")
    assert not default_changed(task_of(""), "failed", "exit code 1")
    copy = task_of("", action="copy: {src: x.yml, dest: /tmp/x}")
    assert default_changed(copy, "success", "changed (1 of 1 files)")
    assert not default_changed(copy, "success", "unchanged")


def test_result_vars_and_scope() -> None:
    """rc, stdout, stderr and their lines win over the task's variables of the same names."""
    values = result_vars(2, "a\nb\n", "e\n")
    assert values == {
        "rc": 2,
        "stdout": "a\nb",
        "stderr": "e",
        "stdout_lines": ["a", "b"],
        "stderr_lines": ["e"],
    }
    scope = ResultScope(Vars({"rc": "mine", "x": 1}), values)
    assert scope["rc"] == 2 and scope["x"] == 1 and "x" in scope and "nope" not in scope
    assert sorted(scope) == ["rc", "stderr", "stderr_lines", "stdout", "stdout_lines", "x"]
    assert len(scope) == 6


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ("failed_when: rc ==", "pb/x.yml:6:18: invalid expression in 'failed_when' of task 't'"),
        (
            "changed_when:\n  - rc == 0\n  - 'stdout !'",
            "pb/x.yml:8:9: invalid expression in 'changed_when' of task 't'",
        ),
        (
            'failed_when: "{{ rc }}"',
            "pb/x.yml:6:18: 'failed_when' in task 't' is already an expression",
        ),
        ("changed_when: 3", "pb/x.yml:6:19: 'changed_when' in task 't' must be an expression"),
        (
            "ignore_errors: yes please",
            "pb/x.yml:6:20: 'ignore_errors' in task 't' must be true or false",
        ),
    ],
)
def test_bad_expressions_are_caught_when_the_playbook_is_read(keys: str, message: str) -> None:
    """A syntax error in failed_when/changed_when is reported with the playbook's file:line."""
    with pytest.raises(PlaybookErrors) as exc:
        task_of(keys)
    assert str(exc.value).startswith(message), str(exc.value)


def test_check_shows_how_runs_are_judged(tmp_path: Path) -> None:
    """`play --check` shows each task's failed_when, changed_when and ignore_errors."""
    (tmp_path / "inv.ini").write_text("h1\n")
    text = (
        "hosts: all\ntasks:\n  - name: t\n    shell: grep -c x f\n    failed_when: rc > 1\n"
        "    changed_when: false\n    ignore_errors: true\n"
    )
    plan = plan_playbook(parse_playbook(text, "pb/x.yml"), load_inventory(tmp_path / "inv.ini"))
    shown = format_check(plan, check_playbook(plan))
    assert "task t (shell) [failed_when rc > 1, changed_when false, ignore_errors]" in shown
