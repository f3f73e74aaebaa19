"""Playbooks: the format, the checks and their messages, and the published JSON Schema."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from easytask.errors import PlaybookError, SourceLocation
from easytask.playbook import (
    ACTIONS,
    COPY_KEYS,
    DEFAULTS_KEYS,
    NOTIFY_KEYS,
    PLAY_KEYS,
    SCRIPT_KEYS,
    TASK_KEYS,
    Action,
    Defaults,
    PlaybookErrors,
    load_playbook,
    parse_playbook,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "playbooks").glob("*.yml"))
CASES = Path(__file__).parent / "cases" / "playbooks"
ERROR_CASES = sorted((CASES / "errors").glob("*.yml"))
SCHEMA = json.loads((REPO / "docs" / "playbook.schema.json").read_text())


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with a playbook directory `pb/` holding a few files, and one outside."""
    (tmp_path / "pb" / "scripts" / "dir").mkdir(parents=True)
    (tmp_path / "pb" / "files").mkdir()
    (tmp_path / "pb" / "scripts" / "ok.sh").write_text("echo ok\n")
    (tmp_path / "pb" / "files" / "f.txt").write_text("x\n")
    (tmp_path / "outside.sh").write_text("echo out\n")
    (tmp_path / "pb" / "scripts" / "link.sh").symlink_to(tmp_path / "outside.sh")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def errors_of(text: str) -> list[str]:
    """Every error message of a playbook text (as pb/x.yml), in file order."""
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(textwrap.dedent(text), "pb/x.yml")
    assert str(exc.value) == str(exc.value.errors[0])
    return [str(e) for e in exc.value.errors]


# -- what a good playbook gives -------------------------------------------------------------------


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    """Every example playbook is valid."""
    playbook = load_playbook(path)
    assert playbook.tasks
    assert playbook.base_dir == str(path.parent)


def test_fields_of_a_full_playbook(tree: Path) -> None:
    """Every key lands in its dataclass field; task settings include the play's defaults."""
    text = textwrap.dedent("""\
        name: nightly
        hosts: [web, db]
        vars: {keep_days: 7, log_dir: "{{ app_dir }}/logs"}
        defaults: {timeout: 5m, retries: 2, retry_delay: 10s, retry_backoff: 2}
        serial: [1, "25%", "3"]
        max_fail_percentage: 10
        forks: 5
        schedule: "0 3 * * *"
        tz: Europe/Berlin
        catch_up: one
        tasks:
          - name: disk
            shell: df -h /
          - name: rotate
            command: find /var/log -mtime +{{ keep_days | quote }} -delete
            needs: disk
            when: [inventory_hostname != 'web2', "true"]
            timeout: 0
          - name: backup
            hosts: db
            run_on: any
            script: scripts/ok.sh --flag {{ keep_days }}
            retries: 0
          - name: argv
            command: [echo, "{{ results.backup.stdout }}", 3]
            needs: [backup]
            run_once: true
            env: {A: "1", B: 2}
            cwd: /tmp
          - name: send
            copy: {src: files/f.txt, dest: "{{ log_dir }}/f.txt", mode: "0640"}
          - name: args
            script: {path: scripts/ok.sh, args: [-x, "{{ keep_days }}"]}
        """)
    book = parse_playbook(text, "pb/x.yml")
    assert (book.name, book.hosts, book.serial, book.max_fail_percentage, book.forks) == (
        "nightly", "web,db", (1, "25%", 3), 10.0, 5,
    )  # fmt: skip
    assert (str(book.schedule), book.tz, book.catch_up) == ("0 3 * * *", "Europe/Berlin", "one")
    assert book.vars == {"keep_days": 7, "log_dir": "{{ app_dir }}/logs"}
    assert book.defaults == Defaults(timeout=300, retries=2, retry_delay=10, retry_backoff=2)
    assert book.path == "pb/x.yml" and book.base_dir == str(tree / "pb")
    assert book.at("tasks") == SourceLocation("pb/x.yml", 11, 1)
    disk, rotate, backup, argv, send, args = book.tasks
    assert (disk.kind, disk.timeout, disk.retries, disk.retry_delay, disk.retry_backoff) == (
        "shell", 300, 2, 10, 2,
    )  # fmt: skip
    assert disk.location == SourceLocation("pb/x.yml", 12, 5)
    assert rotate.action == Action(
        "command", command="find /var/log -mtime +{{ keep_days | quote }} -delete"
    )
    assert (rotate.needs, rotate.when, rotate.timeout) == (
        ("disk",), "(inventory_hostname != 'web2') and (true)", None,
    )  # fmt: skip
    assert rotate.at("when") == SourceLocation("pb/x.yml", 17, 5)
    assert backup.action == Action(
        "script",
        args="--flag {{ keep_days }}",
        path=str(tree / "pb/scripts/ok.sh"),
        path_text="scripts/ok.sh",
    )
    assert (backup.hosts, backup.run_on_any, backup.single, backup.retries) == ("db", True, True, 0)
    assert argv.action == Action("command", argv=("echo", "{{ results.backup.stdout }}", "3"))
    assert (argv.run_once, argv.env, argv.cwd, argv.uses_results) == (
        True, {"A": "1", "B": "2"}, "/tmp", ("backup",),
    )  # fmt: skip
    assert send.action == Action(
        "copy", path=str(tree / "pb/files/f.txt"), path_text="files/f.txt",
        dest="{{ log_dir }}/f.txt", mode="0640",
    )  # fmt: skip
    assert args.action.argv == ("-x", "{{ keep_days }}")
    assert book.task("send") is send


def test_optional_keys_set_to_null_are_absent(tree: Path) -> None:
    """A key with no value is as if it were not written."""
    book = parse_playbook(
        "hosts: all\nvars:\nserial:\nschedule:\ntasks:\n  - name: a\n    shell: x\n    needs:\n"
        "    env:\n    timeout:\n",
        "pb/x.yml",
    )
    assert (book.vars, book.serial, book.schedule) == ({}, (), None)
    assert (book.tasks[0].needs, book.tasks[0].env, book.tasks[0].timeout) == ((), {}, None)


def test_unsafe_strings_are_not_templates(tree: Path) -> None:
    """`!unsafe` text is never checked or rendered as a template."""
    book = parse_playbook(
        "hosts: all\ntasks:\n  - name: a\n    shell: !unsafe echo {{ x }\n", "pb/x.yml"
    )
    assert book.tasks[0].action.command == "echo {{ x }"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("""\
            hosts: all
            tasks:
              - name: restart
                comand: echo hi
            """, ["pb/x.yml:4:5: unknown key 'comand' in task 'restart' (did you mean 'command'?)"], id="unknown-key"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: a
                shell: echo
                command: echo
            """, ["pb/x.yml:5:5: task 'a' has more than one action: 'shell' and 'command' (give it exactly one)"], id="two-actions"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: a
                needs: b
            """, ["pb/x.yml:3:5: task 'a' has no action (give it one of command, shell, script, copy)"], id="no-action"),
        pytest.param("""\
            hosts: all
            tasks:
              - {name: a, shell: x}
              - {name: a, shell: y}
            """, ["pb/x.yml:4:12: duplicate task name 'a' (first at line 3)"], id="duplicate-task"),
        pytest.param("""\
            hosts: all
            tasks:
              - {name: a, shell: x, needs: [c]}
              - {name: b, shell: x, needs: a}
              - {name: c, shell: x, needs: [b]}
            """, ["pb/x.yml:3:25: needs cycle: a -> c -> b -> a"], id="cycle"),
        pytest.param("""\
            hosts: all
            tasks:
              - {name: x, shell: x}
              - {name: a, shell: x, needs: [x, a]}
            """, ["pb/x.yml:4:25: needs cycle: a -> a"], id="self-cycle"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: disk
                shell: x
              - name: b
                shell: x
                needs: [disk, disc]
            """, ["pb/x.yml:7:19: task 'b' needs unknown task 'disc' (did you mean 'disk'?)"], id="unknown-needs"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: a
                shell: x
                needs: [b, b]
              - {name: b, shell: x}
            """, ["pb/x.yml:5:16: task 'a' needs 'b' twice"], id="needs-twice"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: a
                shell: x
                timeout: 5 min
                retry_delay: [1]
                retries: "3"
                retry_backoff: 0.5
            """, [
                "pb/x.yml:5:14: invalid 'timeout' in task 'a': not a duration: '5 min' (use e.g. 30s, 5m, 1h30m, 2d or a number of seconds)",
                "pb/x.yml:6:18: 'retry_delay' in task 'a' must be a duration such as 30s or 5m, got a list",
                "pb/x.yml:7:14: 'retries' in task 'a' must be a non-negative integer, got '3'",
                "pb/x.yml:8:20: 'retry_backoff' in task 'a' must be a number of at least 1, got 0.5",
            ], id="task-settings"),
        pytest.param("""\
            hosts: all
            defaults: {timeout: soon, colour: red}
            max_fail_percentage: 120
            forks: 0
            tasks: [{name: a, shell: x}]
            """, [
                "pb/x.yml:2:21: invalid 'timeout' in 'defaults': not a duration: 'soon' (use e.g. 30s, 5m, 1h30m, 2d or a number of seconds)",
                "pb/x.yml:2:27: unknown key 'colour' in 'defaults'",
                "pb/x.yml:3:22: 'max_fail_percentage' in the play must be a number from 0 to 100, got 120",
                "pb/x.yml:4:8: 'forks' in the play must be a positive integer, got 0",
            ], id="play-settings"),
        pytest.param("""\
            hosts: all
            notify:
              - {url: "ftp://hooks.example.com/x", events: failed}
              - {url: "https://hooks.example.com/x", events: some, colour: red}
              - {events: all}
              - just-a-string
            tasks: [{name: a, shell: x}]
            """, [
                "pb/x.yml:3:11: 'url' in 'notify' must be an http:// or https:// URL, got 'ftp://hooks.example.com/x'",
                "pb/x.yml:4:50: 'events' in 'notify' must be 'all' or 'failed', got 'some'",
                "pb/x.yml:4:56: unknown key 'colour' in 'notify'",
                "pb/x.yml:5:5: 'notify' needs a 'url'",
                "pb/x.yml:6:5: 'notify' must be a mapping with 'url' (and 'events'), or a list of those, got 'just-a-string'",
            ], id="notify"),
        pytest.param("""\
            hosts: all
            serial: [1, "25%", abc, -1, "150%", true]
            tasks: [{name: a, shell: x}]
            """, [
                "pb/x.yml:2:20: invalid 'serial' value 'abc': expected a number of hosts, a percentage such as '25%', or a list of those",
                "pb/x.yml:2:25: invalid 'serial' value -1: expected a number of hosts, a percentage such as '25%', or a list of those",
                "pb/x.yml:2:29: invalid 'serial' value '150%': expected a number of hosts, a percentage such as '25%', or a list of those",
                "pb/x.yml:2:37: invalid 'serial' value True: expected a number of hosts, a percentage such as '25%', or a list of those",
            ], id="serial"),
        pytest.param("""\
            hosts: all
            serial: []
            tasks: [{name: a, shell: x}]
            """, ["pb/x.yml:2:9: 'serial' is an empty list"], id="serial-empty"),
        pytest.param("""\
            hosts: all
            schedule: "0 3 * *"
            tz: Europe/Berln
            catch_up: all
            tasks: [{name: a, shell: x}]
            """, [
                "pb/x.yml:2:11: invalid 'schedule': a cron expression has 5 fields (minute hour day-of-month month day-of-week), '0 3 * *' has 4",
                "pb/x.yml:3:5: unknown time zone 'Europe/Berln' (did you mean 'Europe/Berlin'?)",
                "pb/x.yml:4:11: 'catch_up' in the play must be 'none' or 'one', got 'all'",
            ], id="schedule"),
        pytest.param("""\
            hosts: all
            schedule: "61 * * * *"
            tasks: [{name: a, shell: x}]
            """, ["pb/x.yml:2:11: invalid 'schedule': invalid minute field '61': 61 is out of range 0-59"], id="cron-field"),
        pytest.param("""\
            hosts: all
            tz: UTC
            catch_up: one
            tasks: [{name: a, shell: x}]
            """, ["pb/x.yml:2:1: 'tz' needs a 'schedule'", "pb/x.yml:3:1: 'catch_up' needs a 'schedule'"], id="tz-without-schedule"),
        pytest.param("""\
            hosts: all
            tasks:
              - {name: a, script: ../outside.sh}
              - {name: b, script: /etc/passwd}
              - {name: c, script: scripts/missing.sh --x}
              - {name: d, script: scripts/dir}
              - {name: e, script: scripts/link.sh}
              - {name: f, copy: {src: files/../../outside.sh, dest: /tmp/x}}
              - {name: g, script: "scripts/{{ x }}.sh"}
              - {name: h, script: {path: ../outside.sh}}
            """, [
                "pb/x.yml:3:23: the script '../outside.sh' of task 'a' is outside the playbook's directory (pb)",
                "pb/x.yml:4:23: the script '/etc/passwd' of task 'b' is outside the playbook's directory (pb)",
                "pb/x.yml:5:23: the script 'scripts/missing.sh' of task 'c' does not exist (looked in pb)",
                "pb/x.yml:6:23: the script 'scripts/dir' of task 'd' is not a file",
                "pb/x.yml:7:23: the script 'scripts/link.sh' of task 'e' is outside the playbook's directory (pb)",
                "pb/x.yml:8:27: the copy source 'files/../../outside.sh' of task 'f' is outside the playbook's directory (pb)",
                "pb/x.yml:9:23: the script path of task 'g' cannot be a template",
                "pb/x.yml:10:30: the script '../outside.sh' of task 'h' is outside the playbook's directory (pb)",
            ], id="local-files"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: a
                copy: {src: files/f.txt, dest: /tmp/x, mode: 0644}
              - name: b
                copy: {src: files/f.txt, mode: "rw"}
              - name: c
                copy: files/f.txt
              - name: d
                script: {path: scripts/ok.sh, args: [a, {b: 1}], extra: 1}
              - name: e
                script: {args: -x}
            """, [
                "pb/x.yml:4:50: 'mode' in 'copy' of task 'a' is the number 0644: quote it, as in mode: \"0644\"",
                "pb/x.yml:6:11: 'copy' of task 'b' has no 'dest'",
                "pb/x.yml:6:36: 'mode' in 'copy' of task 'b' must be an octal string such as '0644', got 'rw'",
                "pb/x.yml:8:11: 'copy' in task 'c' must be a mapping with 'src' and 'dest', got 'files/f.txt'",
                "pb/x.yml:10:45: items of 'args' in task 'd' must be strings, got a mapping",
                "pb/x.yml:10:54: unknown key 'extra' in 'script' of task 'd'",
                "pb/x.yml:12:13: 'script' of task 'e' has no 'path'",
            ], id="copy-and-script"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: a
                shell: echo {{ x }
              - name: b
                when: x ==
                shell: x
              - name: c
                shell: |
                  echo one
                  echo {{ two
              - name: d
                when: "{{ x }}"
                shell: x
              - name: e
                command: [echo, "{% if %}"]
                env: {A: "{{ }}"}
            """, [
                "pb/x.yml:4:12: invalid template in 'shell' of task 'a': unexpected '}'",
                "pb/x.yml:6:11: invalid expression in 'when' of task 'b': unexpected 'end of template'",
                "pb/x.yml:11:7: invalid template in 'shell' of task 'c': unexpected end of template, expected 'end of print statement'.",
                "pb/x.yml:13:11: 'when' in task 'd' is already an expression: write it without {{ }}",
                "pb/x.yml:16:21: invalid template in 'command' of task 'e': Expected an expression, got 'end of statement block'",
                "pb/x.yml:17:14: invalid template in environment variable 'A' of task 'e': Expected an expression, got 'end of print statement'",
            ], id="templates"),
        pytest.param("""\
            hosts: all
            hosts: web
            tasks:
              - name: a
                shell: x
                shell: y
            """, ["pb/x.yml:2:1: duplicate key 'hosts' (first at line 1)", "pb/x.yml:6:5: duplicate key 'shell' (first at line 5)"], id="duplicate-keys"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: b
                shell: echo ok
                run_on: all
                run_once: yes
              - name: c
                command: echo "unclosed
              - name: d
                command: []
              - name: e
                shell: ""
              - name: f
                run_once: 1
                shell: x
            """, [
                "pb/x.yml:5:13: 'run_on' in task 'b' must be 'any', got 'all'",
                "pb/x.yml:6:5: task 'b' has both 'run_on: any' and 'run_once' (use one)",
                "pb/x.yml:8:14: 'command' in task 'c' cannot be split into words: No closing quotation (use 'shell' for shell syntax)",
                "pb/x.yml:10:14: 'command' in task 'd' is an empty list",
                "pb/x.yml:12:12: 'shell' in task 'e' must be a non-empty string, got an empty string",
                "pb/x.yml:14:15: 'run_once' in task 'f' must be true or false, got 1",
            ], id="task-values"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: a
                shell: echo {{ results.b.stdout }}
              - name: b
                needs: []
                shell: x
              - name: c
                needs: b
                shell: "{{ results.b.stdout }} {{ results.bb.rc }}"
              - name: d
                needs: c
                shell: echo {{ results.b.rc }} {{ results.d }}
              - name: e
                needs: d
                when: results['a'].rc == 0
                shell: x
            """, [
                "pb/x.yml:4:12: task 'a' uses results.b but does not need 'b' (add it to 'needs')",
                "pb/x.yml:10:12: task 'c' uses results.bb, but there is no task 'bb' (did you mean 'b'?)",
                "pb/x.yml:13:12: task 'd' uses its own results (results.d)",
                "pb/x.yml:16:11: task 'e' uses results.a but does not need 'a' (add it to 'needs')",
            ], id="results"),
        pytest.param("- hosts: all\n  tasks: []\n", [
            "pb/x.yml:1:1: a playbook is one play: a mapping with 'hosts' and 'tasks', not a list (for a single Ansible play, remove the leading '- ')"
        ], id="list"),
        pytest.param("", ["pb/x.yml:1:1: the playbook is empty (it needs at least 'hosts' and 'tasks')"], id="empty"),
        pytest.param("just text\n", ["pb/x.yml:1:1: a playbook must be a mapping with 'hosts' and 'tasks', got a string"], id="scalar"),
        pytest.param("hosts: all\ntasks: []\n", ["pb/x.yml:2:8: 'tasks' is empty (a playbook needs at least one task)"], id="no-tasks"),
        pytest.param("hosts: all\ntasks: {a: 1}\n", ["pb/x.yml:2:8: 'tasks' in the play must be a list of tasks, got a mapping"], id="tasks-mapping"),
        pytest.param("name: x\n", [
            "pb/x.yml:1:1: the play has no 'hosts' (a host pattern such as all or web:&prod)",
            "pb/x.yml:1:1: the play has no 'tasks'",
        ], id="no-hosts"),
        pytest.param("""\
            hosts: 3
            tasks:
              - {name: a, shell: x, hosts: "{{ h }}"}
              - {name: b, shell: x, hosts: ""}
            """, [
                "pb/x.yml:1:8: 'hosts' in the play must be a host pattern (a string), got 3",
                "pb/x.yml:3:32: 'hosts' in task 'a' cannot be a template (narrow it with --limit instead)",
                "pb/x.yml:4:32: invalid 'hosts' in task 'b': the host pattern is empty",
            ], id="hosts"),
        pytest.param("""\
            hosts: all
            vars:
              1x: a
              results: b
              ok: ["{{ bad }", {deep: "{% x %}"}]
            tasks:
              - name: a
                shell: x
                env: {A-B: x, C: [1], D: true, E: 1}
                cwd: 3
            """, [
                "pb/x.yml:3:3: invalid variable name '1x' (use letters, digits and _, not starting with a digit)",
                "pb/x.yml:4:3: variable name 'results' is reserved (results.<task> holds task output)",
                "pb/x.yml:5:8: invalid template in variable 'ok': unexpected '}'",
                "pb/x.yml:5:27: invalid template in variable 'ok': Encountered unknown tag 'x'.",
                "pb/x.yml:9:11: invalid environment variable name 'A-B' in task 'a'",
                "pb/x.yml:9:22: environment variable 'C' of task 'a' must be a string or a number, got a list",
                "pb/x.yml:9:30: environment variable 'D' of task 'a' must be a string or a number, got a boolean (quote it)",
                "pb/x.yml:10:10: 'cwd' in task 'a' must be a non-empty string, got 3",
            ], id="vars-env-cwd"),
        pytest.param("""\
            hosts: all
            command: x
            become_method: su
            tasks:
              - name: a
                shell: x
                register: out
                with_dict: {a: 1}
                serial: 1
                depends_on: b
            """, [
                "pb/x.yml:2:1: unknown key 'command' in the play (it belongs in a task)",
                "pb/x.yml:3:1: unknown key 'become_method' in the play (set ansible_become_method in the inventory (agents use their own way))",
                "pb/x.yml:7:5: unknown key 'register' in task 'a' (every task's output is results.<task name>; 'register' is not needed)",
                "pb/x.yml:8:5: unknown key 'with_dict' in task 'a' (with_dict lookups are not supported: write 'loop' with a list or a template giving one)",
                "pb/x.yml:9:5: unknown key 'serial' in task 'a' (it belongs in the play)",
                "pb/x.yml:10:5: unknown key 'depends_on' in task 'a' (did you mean 'needs'?)",
            ], id="misplaced-keys"),
        pytest.param("""\
            hosts: all
            tasks:
              - name: 3
                shell: x
              - shell: y
              - just a string
              - name: ""
                shell: x
            """, [
                "pb/x.yml:3:11: 'name' of task #1 must be a non-empty string, got 3",
                "pb/x.yml:5:5: task #2 has no 'name' (every task needs a unique name)",
                "pb/x.yml:6:5: task #3 must be a mapping, got a string",
                "pb/x.yml:7:11: 'name' of task #4 must be a non-empty string, got an empty string",
            ], id="task-names"),
        pytest.param("hosts: all\ntasks:\n  - name: a\n    shell: [x\n", ["pb/x.yml:5:1: invalid YAML: did not find expected ',' or ']'"], id="yaml-syntax"),
        pytest.param("hosts: all\ntasks:\n\t- name: a\n", ["pb/x.yml:3:1: invalid YAML: found character that cannot start any token (indent with spaces, not tabs)"], id="yaml-tab"),
        pytest.param("hosts: all\ntasks:\n  - name: a\n    shell: {{ x }} y\n", ["pb/x.yml:4:20: invalid YAML: did not find expected key (quote a value that starts with {{ or sits inside { }, as in \"{{ x }} y\")"], id="yaml-braces"),
        pytest.param("hosts: all\n---\nhosts: b\n", ["pb/x.yml:2:1: invalid YAML: expected a single document in the stream, but found another document"], id="two-documents"),
        pytest.param("hosts: all\ntasks:\n  - name: a\n    shell: echo: hi\n", ["pb/x.yml:4:16: invalid YAML: mapping values are not allowed in this context (quote a value that contains ': ')"], id="yaml-colon"),
    ],
)  # fmt: skip
def test_errors(tree: Path, text: str, expected: list[str]) -> None:
    """Every problem is reported with file:line:col, in file order, as a compiler would."""
    assert errors_of(text) == expected


def test_render_shows_every_error_with_its_line(tree: Path) -> None:
    """render() prints each error, its source line and a caret, then the count."""
    (tree / "pb" / "x.yml").write_text(
        "hosts: all\ntasks:\n  - name: restart\n    comand: echo\n    retries: -1\n"
    )
    with pytest.raises(PlaybookErrors) as exc:
        load_playbook("pb/x.yml")
    assert exc.value.render() == textwrap.dedent("""\
        pb/x.yml:4:5: unknown key 'comand' in task 'restart' (did you mean 'command'?)
                comand: echo
                ^
        pb/x.yml:5:14: 'retries' in task 'restart' must be a non-negative integer, got -1
                retries: -1
                         ^
        2 errors""")
    assert exc.value.exit_code == 2
    assert isinstance(exc.value, PlaybookError)


@pytest.mark.parametrize("path", ERROR_CASES, ids=lambda p: p.name)
def test_error_cases_render_as_expected(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The golden error cases under tests/cases/playbooks/errors render exactly as their .txt."""
    monkeypatch.chdir(CASES)
    with pytest.raises(PlaybookError) as exc:
        load_playbook(path.relative_to(CASES))
    assert exc.value.render() + "\n" == path.with_suffix(".txt").read_text()


def test_unreadable_files(tmp_path: Path) -> None:
    """A missing file and one that is not UTF-8 are errors that name the file."""
    with pytest.raises(PlaybookError) as exc:
        load_playbook(tmp_path / "nope.yml")
    assert str(exc.value) == f"cannot read {tmp_path / 'nope.yml'}: No such file or directory"
    (tmp_path / "latin.yml").write_bytes(b"hosts: all\n# caf\xe9\n")
    with pytest.raises(PlaybookError) as exc:
        load_playbook(tmp_path / "latin.yml")
    assert str(exc.value) == f"{tmp_path / 'latin.yml'}:2: not valid UTF-8"


# -- the JSON Schema --------------------------------------------------------------------------


def test_schema_keys_match_the_checker() -> None:
    """The schema knows exactly the keys the loader knows, at every level."""
    task = SCHEMA["$defs"]["task"]
    assert set(SCHEMA["properties"]) == set(PLAY_KEYS)
    assert set(SCHEMA["required"]) == {"hosts", "tasks"}
    assert set(SCHEMA["properties"]["defaults"]["properties"]) == set(DEFAULTS_KEYS)
    assert set(task["properties"]) == set(TASK_KEYS)
    assert [s["required"] for s in task["oneOf"]] == [[a] for a in ACTIONS]
    assert set(task["properties"]["copy"]["properties"]) == set(COPY_KEYS)
    assert set(SCHEMA["$defs"]["notify"]["properties"]) == set(NOTIFY_KEYS)
    assert set(task["properties"]["script"]["oneOf"][1]["properties"]) == set(SCRIPT_KEYS)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def _yaml_files() -> list[Path]:
    return EXAMPLES + sorted((CASES / "check").glob("*.yml"))


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.name)
def test_valid_playbooks_match_the_schema(path: Path) -> None:
    """Every valid playbook (examples and golden cases) validates against the schema."""
    jsonschema: Any = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(SCHEMA)
    assert [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))] == []


@pytest.mark.parametrize(
    "text",
    [
        "hosts: all\ntasks: [{name: a, shell: x, command: y}]",
        "hosts: all\ntasks: [{name: a, comand: x}]",
        "hosts: all\ntasks: [{name: a, shell: x, timeout: 5 min}]",
        "hosts: all\nserial: 150%\ntasks: [{name: a, shell: x}]",
        "hosts: all\ntz: UTC\ntasks: [{name: a, shell: x}]",
        "hosts: all\nnotify: {url: ftp://x, events: some}\ntasks: [{name: a, shell: x}]",
        "hosts: all\ntasks: [{name: a, copy: {src: f, dest: d, mode: 644}}]",
    ],
)
def test_schema_refuses_what_the_checker_refuses(text: str) -> None:
    """The schema rejects common mistakes the loader rejects too."""
    jsonschema: Any = pytest.importorskip("jsonschema")
    assert list(jsonschema.Draft202012Validator(SCHEMA).iter_errors(yaml.safe_load(text)))


def test_schema_is_valid_json_schema() -> None:
    """The schema itself is a valid draft 2020-12 schema."""
    jsonschema: Any = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_examples_are_in_the_playbook_directory() -> None:
    """The example scripts the playbooks use ship beside them."""
    assert os.access(REPO / "playbooks" / "scripts" / "backup.sh", os.X_OK)


def test_notify_accepts_one_webhook_or_a_list() -> None:
    """`notify:` takes a mapping or a list of them; `events` defaults to all."""
    one = parse_playbook(
        "hosts: all\nnotify: {url: 'https://hooks.example.com/a'}\ntasks: [{name: a, shell: x}]",
        "pb/x.yml",
    )
    many = parse_playbook(
        "hosts: all\nnotify:\n  - {url: 'http://h/a', events: failed}\n  - url: 'http://h/b'\n"
        "tasks: [{name: a, shell: x}]",
        "pb/x.yml",
    )
    assert [(n.url, n.events) for n in one.notify] == [("https://hooks.example.com/a", "all")]
    assert [(n.url, n.events) for n in many.notify] == [
        ("http://h/a", "failed"),
        ("http://h/b", "all"),
    ]


def test_environment_is_ansibles_name_for_env_and_tags_are_read(tree: Path) -> None:
    """`environment:` is read as `env:`; `tags` as a list or a text separated by commas."""
    book = parse_playbook(
        "hosts: all\ntasks:\n  - name: a\n    shell: x\n    environment: {A: '{{ x }}', B: 2}\n"
        "    tags: [deploy, web]\n  - name: b\n    shell: y\n    tags: 'check, web'\n",
        "pb/x.yml",
    )
    assert book.tasks[0].env == {"A": "{{ x }}", "B": "2"}
    assert (book.tasks[0].tags, book.tasks[1].tags) == (("deploy", "web"), ("check", "web"))


@pytest.mark.parametrize(
    ("task", "message"),
    [
        ("env: {A: 1}\n    environment: {B: 2}", "pb/x.yml:6:18: task 'a' has both 'env' and 'environment' (use one)"),
        ("environment: [A]", "pb/x.yml:5:18: 'environment' in task 'a' must be a mapping of variable names to values, got a list"),
        ("environment: {A: '{{ }}'}", "pb/x.yml:5:22: invalid template in environment variable 'A' of task 'a': Expected an expression, got 'end of print statement'"),
        ("tags: [a, 'b c']", "pb/x.yml:5:11: bad tag 'b c' in task 'a' (letters, digits and . _ - only)"),
        ("tags: {a: 1}", "pb/x.yml:5:11: 'tags' in task 'a' must be a tag name or a list of tag names, got a mapping"),
    ],
)  # fmt: skip
def test_environment_and_tags_errors(tree: Path, task: str, message: str) -> None:
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(f"hosts: all\ntasks:\n  - name: a\n    shell: x\n    {task}\n", "pb/x.yml")
    assert str(exc.value) == message


def test_vars_files_are_read_in_order_over_vars(tree: Path) -> None:
    """`vars_files` beside the playbook: read in order, each over `vars` and the ones before."""
    (tree / "pb" / "vars").mkdir()
    (tree / "pb" / "vars" / "a.yml").write_text("port: 80\nname: a\nurl: 'http://{{ host }}'\n")
    (tree / "pb" / "vars" / "b.yml").write_text("name: b\n")
    (tree / "pb" / "vars" / "empty.yml").write_text("# nothing yet\n")
    book = parse_playbook(
        "hosts: all\nvars: {port: 8080, keep: 1}\nvars_files: [vars/a.yml, vars/b.yml, vars/empty.yml]\n"
        "tasks:\n  - name: a\n    shell: x\n",
        "pb/x.yml",
    )
    assert book.vars == {"port": 80, "keep": 1, "name": "b", "url": "http://{{ host }}"}
    assert book.vars_files == tuple(
        str(tree / "pb" / "vars" / n) for n in ("a.yml", "b.yml", "empty.yml")
    )
    one = parse_playbook(
        "hosts: all\nvars_files: vars/b.yml\ntasks: [{name: a, shell: x}]\n", "pb/x.yml"
    )
    assert one.vars == {"name": "b"}


@pytest.mark.parametrize(
    ("files", "written", "message"),
    [
        ({}, "[vars/none.yml]", "pb/x.yml:2:14: the vars file 'vars/none.yml' of the play does not exist (looked in pb)"),
        ({}, "[../outside.sh]", "pb/x.yml:2:14: the vars file '../outside.sh' of the play is outside the playbook's directory (pb)"),
        ({}, "{a: 1}", "pb/x.yml:2:13: 'vars_files' in the play must be a list of file paths, got a mapping"),
        ({}, "[3]", "pb/x.yml:2:14: vars_files: 3 is not a file path"),
        ({"v.yml": "- a\n"}, "[v.yml]", "pb/v.yml:1:1: the vars file 'v.yml' must be a mapping of variables, got a list"),
        ({"v.yml": "ok: 1\nbad name: 2\n"}, "[v.yml]", "pb/v.yml:2:1: invalid variable name 'bad name' (use letters, digits and _, not starting with a digit)"),
        ({"v.yml": "a: [1\n"}, "[v.yml]", "pb/v.yml:2:1: invalid YAML: did not find expected ',' or ']'"),
        ({"v.yml": "a: '{{ x'\n"}, "[v.yml]", "pb/v.yml:1:4: invalid template in variable 'a': unexpected end of template, expected 'end of print statement'."),
        ({"v.yml": "$ANSIBLE_VAULT;1.1;AES256\n6162\n"}, "[v.yml]", "pb/v.yml:1:1: the vault text is damaged (not the hex Ansible Vault writes)"),
        ({"v.yml": "a: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  6162\n"}, "[v.yml]", "pb/v.yml:1:4: the vault text is damaged (not the hex Ansible Vault writes)"),
        ({"v.yml": "a: !vault |\n  $ANSIBLE_VAULT;1.2;AES256;prod\n  6162\n"}, "[v.yml]", "pb/v.yml:1:4: the vault text is damaged (not the hex Ansible Vault writes)"),
    ],
)  # fmt: skip
def test_vars_files_errors_name_the_file_and_line(
    tree: Path, files: dict[str, str], written: str, message: str
) -> None:
    for name, text in files.items():
        (tree / "pb" / name).write_text(text)
    with pytest.raises(PlaybookErrors) as exc:
        parse_playbook(
            f"hosts: all\nvars_files: {written}\ntasks: [{{name: a, shell: x}}]\n", "pb/x.yml"
        )
    assert str(exc.value) == message
