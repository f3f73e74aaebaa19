"""Playbooks: the YAML format, checked with errors that point at file:line:col (pure code).

A playbook is one play: a mapping with `hosts` and `tasks` (see docs/playbooks.md). Every problem
found is collected; `parse_playbook` raises them together as one `PlaybookErrors`, whose `str()`
is the first error (in file order) and whose `render()` lists them all with their lines.
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easytask.cron import Cron
from easytask.durations import parse_duration
from easytask.errors import PatternError, PlaybookError, SourceLocation
from easytask.inventory import split_pattern
from easytask.sourceyaml import Source, YamlError, parse_yaml, type_name
from easytask.templating import attribute_refs, is_template, syntax_problem

__all__ = [
    "ACTIONS",
    "COPY_KEYS",
    "DEFAULTS_KEYS",
    "NOTIFY_EVENTS",
    "NOTIFY_KEYS",
    "PLAY_KEYS",
    "SCRIPT_KEYS",
    "TASK_KEYS",
    "Action",
    "Defaults",
    "Notify",
    "Playbook",
    "PlaybookErrors",
    "Task",
    "load_playbook",
    "load_yaml",
    "parse_playbook",
]

PLAY_KEYS = (
    "name", "hosts", "vars", "secrets", "defaults", "serial", "max_fail_percentage", "forks",
    "schedule", "tz", "catch_up", "notify", "tasks",
)  # fmt: skip
DEFAULTS_KEYS = ("timeout", "retries", "retry_delay", "retry_backoff")
ACTIONS = ("command", "shell", "script", "copy")
TASK_KEYS = (
    "name", *ACTIONS, "hosts", "needs", "when", *DEFAULTS_KEYS, "run_on", "run_once", "env", "cwd",
)  # fmt: skip
COPY_KEYS = ("src", "dest", "mode")
SCRIPT_KEYS = ("path", "args")
CATCH_UP = ("none", "one")
NOTIFY_KEYS = ("url", "events")
NOTIFY_EVENTS = ("all", "failed")
RESERVED_VARS = ("results",)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_MODE = re.compile(r"[0-7]{3,4}\Z")
_PERCENT = re.compile(r"(\d+)%\Z")
_HINTS = {
    "register": "every task's output is results.<task name>; 'register' is not needed",
    "depends_on": "did you mean 'needs'?",
    "requires": "did you mean 'needs'?",
    "after": "did you mean 'needs'?",
    "delay": "did you mean 'retry_delay'?",
    "become": "EasyTask runs commands as the agent's (or SSH) user; 'become' is not supported",
    "loop": "loops are not supported; use a shell loop in 'shell'",
    "with_items": "loops are not supported; use a shell loop in 'shell'",
    "roles": "roles are not supported",
    "gather_facts": "EasyTask gathers no facts; remove it",
}


@dataclass(frozen=True)
class Defaults:
    """Task settings a play gives all its tasks: timeout (None: none), retries and their spacing."""

    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 5.0
    retry_backoff: float = 1.0


@dataclass(frozen=True)
class Action:
    """What a task does: run a command, a shell snippet or a local script, or copy a file.

    command: `command` (str form) or `shell` (templates); `argv`: `command` in list form, or the
    script's arguments as a list (each item a template); `args`: the script's arguments as one
    string (a template, read by the shell); `path`: absolute local path of the script or of the
    copy's source, `path_text` as written; `dest`, `mode`: the copy's target (a template) and mode.
    """

    kind: str
    command: str | None = None
    argv: tuple[str, ...] | None = None
    args: str | None = None
    path: str | None = None
    path_text: str | None = None
    dest: str | None = None
    mode: str | None = None


@dataclass(frozen=True)
class Task:
    """One task: an action and how and where it runs; `timeout` etc. already include the defaults."""

    name: str
    action: Action
    location: SourceLocation
    hosts: str | None = None
    needs: tuple[str, ...] = ()
    when: str | None = None
    timeout: float | None = None
    retries: int = 0
    retry_delay: float = 5.0
    retry_backoff: float = 1.0
    run_on_any: bool = False
    run_once: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    uses_results: tuple[str, ...] = ()
    locations: Mapping[str, SourceLocation] = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        """The action: command, shell, script or copy."""
        return self.action.kind

    @property
    def single(self) -> bool:
        """Whether the task runs once in all (run_once or run_on: any) rather than once per host."""
        return self.run_once or self.run_on_any

    def at(self, key: str | None = None) -> SourceLocation:
        """Where a key of the task is written (the task itself for None or an absent key)."""
        return self.locations.get(key, self.location) if key else self.location


@dataclass(frozen=True)
class Notify:
    """A webhook to call when the job finishes: on every end (`all`) or when it did not succeed."""

    url: str
    events: str = "all"


@dataclass(frozen=True)
class Playbook:
    """A checked playbook: one play and its tasks in file order."""

    name: str
    hosts: str
    tasks: tuple[Task, ...]
    path: str
    base_dir: str
    location: SourceLocation
    vars: Mapping[str, Any] = field(default_factory=dict)
    secrets: tuple[str, ...] = ()  # names of variables whose values are masked in output
    defaults: Defaults = field(default_factory=Defaults)
    serial: tuple[int | str, ...] = ()
    max_fail_percentage: float | None = None
    forks: int | None = None
    schedule: Cron | None = None
    tz: str | None = None
    catch_up: str = "none"
    notify: tuple[Notify, ...] = ()
    text: str = field(default="", repr=False)
    locations: Mapping[str, SourceLocation] = field(default_factory=dict, repr=False)

    def task(self, name: str) -> Task:
        """The task of that name (KeyError if there is none)."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def at(self, key: str | None = None) -> SourceLocation:
        """Where a play-level key is written (the play itself for None or an absent key)."""
        return self.locations.get(key, self.location) if key else self.location


class PlaybookErrors(PlaybookError):
    """The playbook is not valid."""

    def __init__(self, errors: Sequence[PlaybookError]) -> None:
        first = errors[0]
        super().__init__(first.message, location=first.location)
        self.errors = tuple(errors)

    def render(self) -> str:
        """Every error as a compiler prints it, then how many there are."""
        parts = [PlaybookError.render(e) for e in self.errors]
        if len(parts) > 1:
            parts.append(f"{len(parts)} errors")
        return "\n".join(parts)


# -- YAML with positions ----------------------------------------------------------------------


def load_yaml(text: str, path: str) -> tuple[Any, list[PlaybookError], Source]:
    """Parse YAML: (data, duplicate-key problems, position source); syntax errors raise."""
    try:
        source = parse_yaml(text, path, nodes=True)
    except YamlError as exc:
        message = f"invalid YAML: {exc.detail}{_yaml_hint(exc.detail, exc.line)}"
        raise PlaybookErrors([PlaybookError(message, location=exc.location)]) from None
    problems = [PlaybookError(message, location=at) for message, at in source.duplicates]
    return source.data, problems, source


def _yaml_hint(problem: str, line: str) -> str:
    """Advice for the YAML mistakes people make most in playbooks."""
    if "{{" in line:
        return ' (quote a value that starts with {{ or sits inside { }, as in "{{ x }} y")'
    if "mapping values are not allowed" in problem:
        return " (quote a value that contains ': ')"
    if "\t" in line[: len(line) - len(line.lstrip())]:
        return " (indent with spaces, not tabs)"
    return ""


# -- loading ----------------------------------------------------------------------------------


def load_playbook(path: str | Path) -> Playbook:
    """Read and check a playbook file; raises PlaybookError (PlaybookErrors for its contents)."""
    name = str(path)
    try:
        raw = Path(name).read_bytes()
    except OSError as exc:
        raise PlaybookError(f"cannot read {name}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PlaybookErrors(
            [PlaybookError("not valid UTF-8", location=SourceLocation(name, line))]
        ) from None
    return parse_playbook(text, name)


def parse_playbook(text: str, path: str | Path) -> Playbook:
    """Check a playbook's text; `path` names it in errors, and its directory holds its files."""
    name = str(path)
    data, problems, source = load_yaml(text, name)
    checker = _Checker(source, name)
    playbook = checker.play(data, text)
    errors = _in_file_order(problems + checker.errors)
    if errors or playbook is None:
        raise PlaybookErrors(errors or [PlaybookError("the playbook is not valid")])
    return playbook


def _in_file_order(errors: list[PlaybookError]) -> list[PlaybookError]:
    def key(e: PlaybookError) -> tuple[int, int]:
        at = e.location
        return (at.line or 0, at.col or 0) if at else (0, 0)

    unique = list({(str(e.location), e.message): e for e in errors}.values())
    return sorted(unique, key=key)


def suggest(word: str, known: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for a near miss, else ''."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Checker:
    """Walks the document and collects errors; a part that is wrong comes back as None."""

    def __init__(self, source: Source, path: str) -> None:
        self.src = source
        self.path = path
        self.base_dir = os.path.realpath(os.path.dirname(os.path.abspath(path)))
        self.errors: list[PlaybookError] = []
        self.needs_at: dict[str, list[SourceLocation]] = {}
        self.results_at: dict[str, dict[str, SourceLocation]] = {}

    def fail(self, message: str, at: SourceLocation) -> None:
        self.errors.append(PlaybookError(message, location=at))

    def bad(self, container: Any, where: Any, message: str) -> None:
        """An error about a value (a mapping's value by key, a list's item by index)."""
        self.fail(message, self.src.value(container, where))

    def expect(self, data: dict[Any, Any], key: str, where: str, expected: str) -> None:
        self.bad(data, key, f"{key!r} in {where} must be {expected}, got {_got(data[key])}")

    # -- the play ---------------------------------------------------------------------------

    def play(self, data: Any, text: str) -> Playbook | None:
        top = SourceLocation(self.path, 1, 1)
        if data is None:
            self.fail("the playbook is empty (it needs at least 'hosts' and 'tasks')", top)
            return None
        if isinstance(data, list):
            message = "a playbook is one play: a mapping with 'hosts' and 'tasks', not a list"
            self.fail(f"{message} (for a single Ansible play, remove the leading '- ')", top)
            return None
        if not isinstance(data, dict):
            self.fail(
                f"a playbook must be a mapping with 'hosts' and 'tasks', got {type_name(data)}", top
            )
            return None
        self.unknown_keys(data, PLAY_KEYS, "the play", elsewhere=TASK_KEYS)
        name = self.string(data, "name", "the play") or Path(self.path).stem
        hosts = self.hosts(data, "the play", required=True)
        play_vars = self.variables(data)
        secrets = self.secret_names(data)
        defaults = self.defaults(data)
        serial = self.serial(data)
        max_fail = self.number(data, "max_fail_percentage", "the play", low=0, high=100)
        forks = self.integer(data, "forks", "the play", low=1)
        schedule, tz, catch_up = self.schedule(data)
        notify = self.notify(data)
        tasks = self.tasks(data, defaults or Defaults())
        if hosts is None or tasks is None or defaults is None or self.errors:
            return None
        return Playbook(
            name=name,
            hosts=hosts,
            tasks=tasks,
            path=self.path,
            base_dir=self.base_dir,
            location=self.src.start(data),
            vars=play_vars,
            secrets=secrets,
            defaults=defaults,
            serial=serial,
            max_fail_percentage=max_fail,
            forks=forks,
            schedule=schedule,
            tz=tz,
            catch_up=catch_up,
            notify=notify,
            text=text,
            locations={k: self.src.key(data, k) for k in data},
        )

    def unknown_keys(
        self,
        data: dict[Any, Any],
        known: Sequence[str],
        where: str,
        *,
        elsewhere: Sequence[str] = (),
    ) -> None:
        for key in data:
            at = self.src.key(data, key)
            if not isinstance(key, str):
                self.fail(f"keys in {where} must be strings, got {type_name(key)} {key!r}", at)
            elif key not in known:
                if key in _HINTS:
                    hint = f" ({_HINTS[key]})"
                elif key in elsewhere:
                    hint = (
                        " (it belongs in a task)"
                        if where == "the play"
                        else " (it belongs in the play)"
                    )
                else:
                    hint = suggest(key, known)
                self.fail(f"unknown key {key!r} in {where}{hint}", at)

    def hosts(self, data: dict[Any, Any], where: str, *, required: bool = False) -> str | None:
        value = data.get("hosts")
        if value is None:
            if required:
                self.fail(
                    f"{where} has no 'hosts' (a host pattern such as all or web:&prod)",
                    self.src.start(data),
                )
            return None
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = ",".join(value)
        if not isinstance(value, str):
            self.expect(data, "hosts", where, "a host pattern (a string)")
            return None
        if is_template(value):
            self.bad(
                data,
                "hosts",
                f"'hosts' in {where} cannot be a template (narrow it with --limit instead)",
            )
            return None
        try:
            split_pattern(value)
        except PatternError as exc:
            self.bad(data, "hosts", f"invalid 'hosts' in {where}: {exc.message}")
            return None
        return value.strip()

    def variables(self, data: dict[Any, Any]) -> dict[str, Any]:
        value = data.get("vars")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.expect(data, "vars", "the play", "a mapping")
            return {}
        for name in value:
            at = self.src.key(value, name)
            if not isinstance(name, str) or not _NAME.match(name):
                self.fail(
                    f"invalid variable name {name!r} (use letters, digits and _, not starting with a digit)",
                    at,
                )
            elif name in RESERVED_VARS:
                self.fail(
                    f"variable name {name!r} is reserved (results.<task> holds task output)", at
                )
            else:
                self.nested_templates(value, name, f"variable {name!r}")
        return dict(value)

    def secret_names(self, data: dict[Any, Any]) -> tuple[str, ...]:
        value = data.get("secrets")
        if value is None:
            return ()
        if not isinstance(value, list):
            self.expect(data, "secrets", "the play", "a list of variable names")
            return ()
        names = []
        for index, name in enumerate(value):
            if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED_VARS:
                self.bad(value, index, f"secrets: {name!r} is not a variable name")
            else:
                names.append(name)
        return tuple(dict.fromkeys(names))

    def nested_templates(self, container: Any, where: Any, what: str) -> None:
        value = container[where]
        if isinstance(value, str):
            self.template(container, where, what)
        elif isinstance(value, dict | list):
            for key in value if isinstance(value, dict) else range(len(value)):
                self.nested_templates(value, key, what)

    def defaults(self, data: dict[Any, Any]) -> Defaults | None:
        value = data.get("defaults")
        if value is None:
            return Defaults()
        if not isinstance(value, dict):
            self.expect(data, "defaults", "the play", "a mapping")
            return None
        self.unknown_keys(value, DEFAULTS_KEYS, "'defaults'")
        return self.settings(value, "'defaults'", Defaults())

    def settings(self, data: dict[Any, Any], where: str, base: Defaults) -> Defaults:
        """timeout, retries, retry_delay, retry_backoff of a task or of the play's defaults."""
        return Defaults(
            timeout=self.duration(data, "timeout", where, base.timeout, zero_is_none=True),
            retries=self.integer(data, "retries", where, low=0, default=base.retries),
            retry_delay=self.duration(data, "retry_delay", where, base.retry_delay) or 0.0,
            retry_backoff=self.number(
                data, "retry_backoff", where, low=1, default=base.retry_backoff
            ),
        )

    def serial(self, data: dict[Any, Any]) -> tuple[int | str, ...]:
        value = data.get("serial")
        if value is None:
            return ()
        if value == []:
            self.bad(data, "serial", "'serial' is an empty list")
        container, items = (
            (value, list(enumerate(value)))
            if isinstance(value, list)
            else (data, [("serial", value)])
        )
        out: list[int | str] = []
        for where, item in items:
            size = _serial_size(item)
            if size is None:
                self.bad(
                    container,
                    where,
                    f"invalid 'serial' value {item!r}: expected a number of hosts,"
                    " a percentage such as '25%', or a list of those",
                )
            else:
                out.append(size)
        return tuple(out)

    def schedule(self, data: dict[Any, Any]) -> tuple[Cron | None, str | None, str]:
        cron, tz, catch_up = None, None, "none"
        if data.get("schedule") is not None:
            if not isinstance(data["schedule"], str):
                self.expect(data, "schedule", "the play", "a cron expression (a string)")
            else:
                try:
                    cron = Cron.parse(data["schedule"])
                except ValueError as exc:
                    self.bad(data, "schedule", f"invalid 'schedule': {exc}")
        for key in ("tz", "catch_up"):
            if data.get(key) is not None and "schedule" not in data:
                self.fail(f"{key!r} needs a 'schedule'", self.src.key(data, key))
        value = data.get("tz")
        if value is not None and "schedule" in data:
            if not isinstance(value, str):
                self.expect(data, "tz", "the play", "a time zone name such as Europe/Berlin")
            elif not _zone_exists(value):
                self.bad(
                    data,
                    "tz",
                    f"unknown time zone {value!r}{suggest(value, sorted(zoneinfo.available_timezones()))}",
                )
            else:
                tz = value
        value = data.get("catch_up")
        if value is not None and "schedule" in data:
            if value not in CATCH_UP:
                self.expect(data, "catch_up", "the play", "'none' or 'one'")
            else:
                catch_up = value
        return cron, tz, catch_up

    def notify(self, data: dict[Any, Any]) -> tuple[Notify, ...]:
        value = data.get("notify")
        if value is None:
            return ()
        if value == []:
            self.bad(data, "notify", "'notify' is an empty list")
            return ()
        container, items = (
            (value, list(enumerate(value)))
            if isinstance(value, list)
            else (data, [("notify", value)])
        )
        out: list[Notify] = []
        for where, item in items:
            if not isinstance(item, dict):
                self.bad(
                    container,
                    where,
                    f"'notify' must be a mapping with 'url' (and 'events'), or a list of those, "
                    f"got {_got(item)}",
                )
                continue
            self.unknown_keys(item, NOTIFY_KEYS, "'notify'")
            url = item.get("url")
            if url is None:
                self.fail("'notify' needs a 'url'", self.src.start(item))
                continue
            if not isinstance(url, str) or not re.match(r"https?://[^\s/]+", url):
                self.bad(
                    item,
                    "url",
                    f"'url' in 'notify' must be an http:// or https:// URL, got {_got(url)}",
                )
                continue
            events = item.get("events", "all")
            if events not in NOTIFY_EVENTS:
                self.expect(item, "events", "'notify'", "'all' or 'failed'")
                continue
            out.append(Notify(url=str(url), events=str(events)))
        return tuple(out)

    # -- tasks ------------------------------------------------------------------------------

    def tasks(self, data: dict[Any, Any], defaults: Defaults) -> tuple[Task, ...] | None:
        value = data.get("tasks")
        if value is None:
            self.fail("the play has no 'tasks'", self.src.key(data, "tasks"))
            return None
        if not isinstance(value, list):
            self.expect(data, "tasks", "the play", "a list of tasks")
            return None
        if not value:
            self.bad(data, "tasks", "'tasks' is empty (a playbook needs at least one task)")
            return None
        names: dict[str, SourceLocation] = {}
        tasks = [self.task(value, index, defaults, names) for index in range(len(value))]
        if any(t is None for t in tasks):
            return None
        checked = [t for t in tasks if t is not None]
        _DependencyChecker(self, checked).check()
        return tuple(checked)

    def task(
        self, tasks: list[Any], index: int, defaults: Defaults, names: dict[str, SourceLocation]
    ) -> Task | None:
        data = tasks[index]
        number = f"task #{index + 1}"
        if not isinstance(data, dict):
            self.bad(tasks, index, f"{number} must be a mapping, got {type_name(data)}")
            return None
        start = self.src.start(data)
        errors_before = len(self.errors)
        name = data.get("name")
        label = f"task {name!r}" if isinstance(name, str) and name.strip() else number
        if "name" not in data:
            self.fail(f"{number} has no 'name' (every task needs a unique name)", start)
        elif label == number:
            self.bad(
                data, "name", f"'name' of {number} must be a non-empty string, got {_got(name)}"
            )
        elif name in names:
            self.bad(
                data, "name", f"duplicate task name {name!r} (first at line {names[name].line})"
            )
        elif isinstance(name, str):
            names[name] = self.src.value(data, "name")
        self.unknown_keys(data, TASK_KEYS, label, elsewhere=PLAY_KEYS)
        action = self.one_action(data, label, start)
        hosts = self.hosts(data, label)
        needs = self.needs(data, label)
        when = self.when(data, label)
        settings = self.settings(data, label, defaults)
        run_on_any = data.get("run_on") is not None
        if run_on_any and data["run_on"] != "any":
            self.expect(data, "run_on", label, "'any'")
        run_once = self.boolean(data, "run_once", label)
        if run_on_any and run_once:
            self.fail(
                f"{label} has both 'run_on: any' and 'run_once' (use one)",
                self.src.key(data, "run_once"),
            )
        env = self.env(data, label)
        cwd = self.string(data, "cwd", label)
        if cwd is not None:
            self.template(data, "cwd", f"'cwd' of {label}")
        if len(self.errors) > errors_before or action is None or not isinstance(name, str):
            return None
        return Task(
            name=name,
            action=action,
            location=start,
            hosts=hosts,
            needs=needs,
            when=when,
            timeout=settings.timeout,
            retries=settings.retries,
            retry_delay=settings.retry_delay,
            retry_backoff=settings.retry_backoff,
            run_on_any=run_on_any,
            run_once=run_once,
            env=env,
            cwd=cwd,
            uses_results=self.result_refs(data, name),
            locations={k: self.src.key(data, k) for k in data},
        )

    def one_action(self, data: dict[Any, Any], label: str, start: SourceLocation) -> Action | None:
        present = [k for k in data if k in ACTIONS]
        if len(present) == 1:
            return self.action(data, present[0], label)
        if present:
            first, second = present[:2]
            message = (
                f"{label} has more than one action: {first!r} and {second!r} (give it exactly one)"
            )
            self.fail(message, self.src.key(data, second))
        elif not any(
            suggest(k, ACTIONS) for k in data if isinstance(k, str) and k not in TASK_KEYS
        ):
            # (a misspelt action is reported as an unknown key instead)
            self.fail(f"{label} has no action (give it one of {', '.join(ACTIONS)})", start)
        return None

    def result_refs(self, data: dict[Any, Any], name: str) -> tuple[str, ...]:
        """The tasks whose results.<task> the task's templates read, with where each is read."""
        found = self.results_at.setdefault(name, {})
        for container, where, expression in _template_slots(data):
            at = self.src.value(container, where)
            for used in attribute_refs(container[where], "results", expression=expression):
                found.setdefault(used, at)
        return tuple(found)

    def action(self, data: dict[Any, Any], kind: str, label: str) -> Action | None:
        value = data[kind]
        what = f"{kind!r} of {label}"
        if kind == "script":
            return self.script(data, label)
        if kind == "copy":
            return self.copy(data, label)
        if kind == "command" and isinstance(value, list):
            argv = self.argv(data, kind, label)
            return Action("command", argv=argv) if argv else None
        if not isinstance(value, str) or not value.strip():
            self.expect(
                data,
                kind,
                label,
                "a string or a list of strings" if kind == "command" else "a non-empty string",
            )
            return None
        if not self.template(data, kind, what):
            return None
        if kind == "command" and not is_template(value):
            try:
                shlex.split(value)
            except ValueError as exc:
                self.bad(
                    data,
                    kind,
                    f"'command' in {label} cannot be split into words: {exc} (use 'shell' for shell syntax)",
                )
                return None
        return Action(kind, command=value)

    def argv(self, container: Any, key: str, label: str) -> tuple[str, ...] | None:
        items = container[key]
        if not items:
            self.bad(container, key, f"{key!r} in {label} is an empty list")
            return None
        for index, item in enumerate(items):
            if isinstance(item, bool) or not isinstance(item, str | int | float):
                self.bad(
                    items,
                    index,
                    f"items of {key!r} in {label} must be strings, got {type_name(item)}",
                )
                return None
            if isinstance(item, str) and not self.template(items, index, f"{key!r} of {label}"):
                return None
        return tuple(str(item) for item in items)

    def script(self, data: dict[Any, Any], label: str) -> Action | None:
        value = data["script"]
        if isinstance(value, dict):
            where = f"'script' of {label}"
            self.unknown_keys(value, SCRIPT_KEYS, where)
            path = value.get("path")
            if not isinstance(path, str) or not path.strip():
                if "path" in value:
                    self.expect(value, "path", where, "a file name")
                else:
                    self.bad(data, "script", f"{where} has no 'path'")
                return None
            local = self.local_file(path, "script", label, self.src.value(value, "path"))
            args = value.get("args")
            if isinstance(args, list):
                argv = self.argv(value, "args", label)
                return (
                    Action("script", argv=argv, path=local, path_text=path)
                    if local and argv
                    else None
                )
            if args is not None and not isinstance(args, str):
                self.expect(value, "args", where, "a string or a list")
                return None
            if args is not None and not self.template(value, "args", f"the arguments of {where}"):
                return None
            return Action("script", args=args or "", path=local, path_text=path) if local else None
        if not isinstance(value, str) or not value.strip():
            self.expect(data, "script", label, "a file name (with arguments) or a mapping")
            return None
        path, *rest = value.strip().split(None, 1)
        args = rest[0] if rest else ""
        self.template(data, "script", f"'script' of {label}")
        local = self.local_file(path, "script", label, self.src.value(data, "script"))
        return Action("script", args=args, path=local, path_text=path) if local else None

    def copy(self, data: dict[Any, Any], label: str) -> Action | None:
        value = data["copy"]
        if not isinstance(value, dict):
            self.expect(data, "copy", label, "a mapping with 'src' and 'dest'")
            return None
        where = f"'copy' of {label}"
        self.unknown_keys(value, COPY_KEYS, where)
        paths: dict[str, str] = {}
        for key in ("src", "dest"):
            if key not in value:
                self.bad(data, "copy", f"{where} has no {key!r}")
            elif not isinstance(value[key], str) or not value[key].strip():
                self.expect(value, key, where, "a path")
            else:
                paths[key] = value[key]
        mode = value.get("mode")
        if isinstance(mode, int) and not isinstance(mode, bool):
            node = self.src.node(value, "mode")
            written = getattr(node, "value", mode)
            self.bad(
                value,
                "mode",
                f"'mode' in {where} is the number {written}: quote it, as in mode: \"0644\"",
            )
        elif mode is not None and (not isinstance(mode, str) or not _MODE.match(mode)):
            self.expect(value, "mode", where, "an octal string such as '0644'")
        local = None
        if "src" in paths:
            local = self.local_file(
                paths["src"], "copy source", label, self.src.value(value, "src")
            )
        if "dest" in paths:
            self.template(value, "dest", f"'dest' of {where}")
        if local is None or "dest" not in paths:
            return None
        return Action("copy", path=local, path_text=paths["src"], dest=paths["dest"], mode=mode)

    def local_file(self, text: str, what: str, label: str, at: SourceLocation) -> str | None:
        """The absolute path of a file that must exist inside the playbook's directory."""
        if "{{" in text or "{%" in text:
            self.fail(f"the {what} path of {label} cannot be a template", at)
            return None
        folder = os.path.dirname(self.path) or "."
        # realpath first: a symlink (or ..) that leads out of the directory is outside it.
        real = os.path.realpath(os.path.join(self.base_dir, text))
        problem = None
        if os.path.commonpath([real, self.base_dir]) != self.base_dir:
            problem = f"is outside the playbook's directory ({folder})"
        elif not os.path.exists(real):
            problem = f"does not exist (looked in {folder})"
        elif not os.path.isfile(real):
            problem = "is not a file"
        if problem:
            self.fail(f"the {what} {text!r} of {label} {problem}", at)
            return None
        return real

    def needs(self, data: dict[Any, Any], label: str) -> tuple[str, ...]:
        value = data.get("needs")
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            self.expect(data, "needs", label, "a task name or a list of task names")
            return ()
        seen: dict[str, SourceLocation] = {}
        for index, item in enumerate(items):
            at = (
                self.src.value(value, index)
                if isinstance(value, list)
                else self.src.value(data, "needs")
            )
            if item in seen:
                self.fail(f"{label} needs {item!r} twice", at)
            seen[item] = seen.get(item, at)
        if isinstance(data.get("name"), str):
            self.needs_at[data["name"]] = list(seen.values())
        return tuple(seen)

    def when(self, data: dict[Any, Any], label: str) -> str | None:
        value = data.get("when")
        if value is None:
            return None
        container, items = (
            (value, list(enumerate(value)))
            if isinstance(value, list)
            else (data, [("when", value)])
        )
        exprs: list[str] = []
        for where, item in items:
            if isinstance(item, bool):
                exprs.append("true" if item else "false")
                continue
            if not isinstance(item, str) or not item.strip():
                self.bad(
                    container,
                    where,
                    f"'when' in {label} must be an expression (or a list of them), got {_got(item)}",
                )
            elif "{{" in item or "{%" in item:
                self.bad(
                    container,
                    where,
                    f"'when' in {label} is already an expression: write it without {{{{ }}}}",
                )
            elif problem := syntax_problem(item, expression=True):
                self.bad(container, where, f"invalid expression in 'when' of {label}: {problem[1]}")
            else:
                exprs.append(item.strip())
                continue
            return None
        return exprs[0] if len(exprs) == 1 else " and ".join(f"({e})" for e in exprs) or None

    def env(self, data: dict[Any, Any], label: str) -> dict[str, str]:
        value = data.get("env")
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.expect(data, "env", label, "a mapping of variable names to values")
            return {}
        out: dict[str, str] = {}
        for name, item in value.items():
            what = f"environment variable {name!r} of {label}"
            if not isinstance(name, str) or not _NAME.match(name):
                self.fail(
                    f"invalid environment variable name {name!r} in {label}",
                    self.src.key(value, name),
                )
            elif isinstance(item, bool) or not isinstance(item, str | int | float):
                hint = " (quote it)" if isinstance(item, bool) else ""
                self.bad(
                    value, name, f"{what} must be a string or a number, got {type_name(item)}{hint}"
                )
            else:
                out[name] = str(item)
                if isinstance(item, str):
                    self.template(value, name, what)
        return out

    # -- scalars ----------------------------------------------------------------------------

    def template(self, container: Any, where: Any, what: str) -> bool:
        """Check the template syntax of one string value; False (and an error) if it is wrong."""
        problem = syntax_problem(container[where]) if is_template(container[where]) else None
        if problem is None:
            return True
        at = self.src.template_at(container, where, problem[0])
        self.fail(f"invalid template in {what}: {problem[1]}", at)
        return False

    def string(self, data: dict[Any, Any], key: str, where: str) -> str | None:
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            self.expect(data, key, where, "a non-empty string")
            return None
        return value

    def boolean(self, data: dict[Any, Any], key: str, where: str) -> bool:
        value = data.get(key)
        if value is not None and not isinstance(value, bool):
            self.expect(data, key, where, "true or false")
            return False
        return bool(value)

    def integer(
        self, data: dict[Any, Any], key: str, where: str, *, low: int, default: Any = None
    ) -> Any:
        value = data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            self.expect(
                data, key, where, "a positive integer" if low == 1 else "a non-negative integer"
            )
            return default
        return value

    def number(
        self,
        data: dict[Any, Any],
        key: str,
        where: str,
        *,
        low: float,
        high: float | None = None,
        default: Any = None,
    ) -> Any:
        value = data.get(key)
        if value is None:
            return default
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or value < low or (high is not None and value > high):
            span = f"from {low:g} to {high:g}" if high is not None else f"of at least {low:g}"
            self.expect(data, key, where, f"a number {span}")
            return default
        return float(value)

    def duration(
        self,
        data: dict[Any, Any],
        key: str,
        where: str,
        default: float | None,
        *,
        zero_is_none: bool = False,
    ) -> float | None:
        value = data.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            self.bad(
                data,
                key,
                f"{key!r} in {where} must be a duration such as 30s or 5m, got {type_name(value)}",
            )
            return default
        try:
            seconds = parse_duration(value)
        except ValueError as exc:
            self.bad(data, key, f"invalid {key!r} in {where}: {exc}")
            return default
        return None if zero_is_none and seconds == 0 else seconds


class _DependencyChecker:
    """`needs`: unknown targets, cycles, and results.<task> used without needing the task."""

    def __init__(self, checker: _Checker, tasks: list[Task]) -> None:
        self.checker = checker
        self.tasks = {t.name: t for t in tasks}
        self.order = [t.name for t in tasks]

    def check(self) -> None:
        known = True
        for task in self.tasks.values():
            for index, need in enumerate(task.needs):
                if need not in self.tasks:
                    self.checker.fail(
                        f"task {task.name!r} needs unknown task {need!r}{suggest(need, self.order)}",
                        self._need_at(task, index),
                    )
                    known = False
        if not known:
            return
        cycle = self.find_cycle()
        if cycle:
            first = self.tasks[cycle[0]]
            self.checker.fail(f"needs cycle: {' -> '.join(cycle)}", first.at("needs"))
            return
        for task in self.tasks.values():
            before = self.ancestors(task.name)
            for used in task.uses_results:
                if used == task.name:
                    problem = f"task {task.name!r} uses its own results (results.{used})"
                elif used not in self.tasks:
                    problem = f"task {task.name!r} uses results.{used}, but there is no task {used!r}{suggest(used, self.order)}"
                elif used not in before:
                    problem = f"task {task.name!r} uses results.{used} but does not need {used!r} (add it to 'needs')"
                else:
                    continue
                self.checker.fail(problem, self.checker.results_at[task.name][used])

    def _need_at(self, task: Task, index: int) -> SourceLocation:
        places = self.checker.needs_at.get(task.name, [])
        return places[index] if index < len(places) else task.at("needs")

    def find_cycle(self) -> list[str] | None:
        state: dict[str, int] = {}  # 1: on the current path, 2: done
        path: list[str] = []

        def visit(name: str) -> list[str] | None:
            state[name] = 1
            path.append(name)
            for need in self.tasks[name].needs:
                if state.get(need) == 1:
                    return [*path[path.index(need) :], need]
                if need not in state:
                    found = visit(need)
                    if found:
                        return found
            path.pop()
            state[name] = 2
            return None

        for name in self.order:
            if name not in state:
                found = visit(name)
                if found:
                    return found
        return None

    def ancestors(self, name: str) -> set[str]:
        found: set[str] = set()
        todo = list(self.tasks[name].needs)
        while todo:
            need = todo.pop()
            if need not in found:
                found.add(need)
                todo.extend(self.tasks[need].needs)
        return found


def _serial_size(item: Any) -> int | str | None:
    if isinstance(item, bool):
        return None
    if isinstance(item, int):
        return item if item >= 0 else None
    if isinstance(item, str):
        text = item.strip()
        m = _PERCENT.match(text)
        if m:
            return f"{int(m[1])}%" if 0 <= int(m[1]) <= 100 else None
        if text.isdigit():
            return int(text)
    return None


def _zone_exists(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _template_slots(data: dict[Any, Any]) -> Iterator[tuple[Any, Any, bool]]:
    """(container, key or index, is-an-expression) of every string of a task that is rendered."""
    for key in (*ACTIONS, "env", "cwd", "when"):
        value = data.get(key)
        if isinstance(value, str):
            yield data, key, key == "when"
        elif isinstance(value, list):
            yield from (
                (value, i, key == "when") for i, v in enumerate(value) if isinstance(v, str)
            )
        elif isinstance(value, dict):
            for sub, item in value.items():
                if key != "env" and sub not in ("args", "dest"):
                    continue
                if isinstance(item, str):
                    yield value, sub, False
                elif isinstance(item, list):
                    yield from ((item, i, False) for i, v in enumerate(item) if isinstance(v, str))


def _got(value: Any) -> str:
    """A wrong value for a message: its text when it is a string or a number, else its type."""
    if isinstance(value, str):
        return "an empty string" if not value.strip() else repr(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return type_name(value)
