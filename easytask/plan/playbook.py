"""A playbook and an inventory -> the runs of a job: hosts, serial batches, dependencies (pure code).

The engine takes a `PlaybookPlan`: every `TaskRun` with the runs it waits for and its batch, and
renders each command when the run starts (`render_action`), with the results of earlier runs.
`check_playbook` renders everything up front for `easytask play --check`.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from easytask.errors import (
    NoHostsMatched,
    PatternError,
    PlaybookError,
    SourceLocation,
    TemplateError,
    UsageError,
)
from easytask.plan.adhoc import HostSource, connection_of
from easytask.playbook import RESERVED_VARS, Action, Playbook, Task, load_yaml
from easytask.templating import Vars, evaluate, render, variables

__all__ = [
    "CheckedRun",
    "PlannedTask",
    "PlaybookPlan",
    "RenderedAction",
    "RunKey",
    "TaskRun",
    "check_playbook",
    "dumps_check",
    "evaluate_when",
    "format_check",
    "parse_extra_vars",
    "plan_playbook",
    "render_action",
    "render_command",
    "serial_batches",
    "stop_after_batch",
    "task_result",
]


class RunKey(NamedTuple):
    """A run of a job: a task on a host (host None: a `run_on: any` run, placed when it starts)."""

    task: str
    host: str | None


@dataclass(frozen=True)
class PlannedTask:
    """A task as it runs in this job: its hosts after --limit, and its settings with the defaults."""

    name: str
    kind: str  # command | shell | script | copy
    action: Action
    hosts: tuple[str, ...]  # where it runs (per host), or the hosts it may run on (once, any)
    needs: tuple[str, ...]
    when: str | None
    timeout: float | None
    retries: int
    retry_delay: float
    retry_backoff: float
    run_on_any: bool
    run_once: bool
    env: Mapping[str, str]
    cwd: str | None
    location: SourceLocation
    task: Task = field(repr=False)

    @property
    def single(self) -> bool:
        """Whether the task runs once in all rather than once per host."""
        return self.run_once or self.run_on_any

    def retry_wait(self, attempt: int) -> float:
        """Seconds to wait before attempt `attempt` (2, 3, ...): retry_delay × retry_backoff^(n-2)."""
        return self.retry_delay * self.retry_backoff ** max(attempt - 2, 0)


@dataclass(frozen=True)
class TaskRun:
    """One run to queue: its task and host, its batch, the runs it waits for, whose results it sees.

    `candidates` are the hosts a `run_on: any` run may go to (the host itself otherwise).
    `results_from` maps each task whose `results.<task>` this run may read to the run that
    provides them: the run of that task on the same host, or the task's single run.
    """

    task: str
    host: str | None
    candidates: tuple[str, ...]
    batch: int
    needs: tuple[RunKey, ...]
    results_from: Mapping[str, RunKey] = field(default_factory=dict)

    @property
    def key(self) -> RunKey:
        """(task, host) of this run."""
        return RunKey(self.task, self.host)


@dataclass(frozen=True)
class PlaybookPlan:
    """A planned playbook job: tasks in dependency order and every run, in order."""

    playbook: Playbook
    hosts: tuple[str, ...]  # the play's hosts after --limit
    tasks: tuple[PlannedTask, ...]  # in dependency order (file order among equals)
    runs: tuple[TaskRun, ...]  # in task order, then host order
    batches: tuple[tuple[str, ...], ...]
    host_vars: Mapping[str, Mapping[str, Any]] = field(repr=False)  # inventory + magic vars
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    limit: str | None = None

    @property
    def name(self) -> str:
        """The playbook's name."""
        return self.playbook.name

    @property
    def all_hosts(self) -> tuple[str, ...]:
        """Every host the job may run on: the play's and each task's (run_on any candidates too)."""
        hosts = list(self.hosts)
        for task in self.tasks:
            hosts += task.hosts
        for run in self.runs:
            hosts += run.candidates
        return tuple(dict.fromkeys(hosts))

    @property
    def forks(self) -> int | None:
        """At most this many runs at once (None: no limit of the playbook's own)."""
        return self.playbook.forks

    @property
    def max_fail_percentage(self) -> float | None:
        """See `stop_after_batch`."""
        return self.playbook.max_fail_percentage

    def task(self, name: str) -> PlannedTask:
        """The planned task of that name (KeyError if none)."""
        for task in self.tasks:
            if task.name == name:
                return task
        raise KeyError(name)

    def run(self, key: RunKey) -> TaskRun:
        """The run with that key (KeyError if none)."""
        return self._run_index[key]

    @cached_property
    def _run_index(self) -> dict[RunKey, TaskRun]:
        return {run.key: run for run in self.runs}

    def connection(self, host: str) -> str:
        """How a host is reached: `agent` or `ssh` (its `easytask_connection`)."""
        return connection_of(host, dict(self.host_vars.get(host, {})))

    def context(self, host: str, results: Mapping[str, Any] | None = None) -> Vars:
        """The template variables on a host: inventory and magic vars < play vars < extra vars.

        `results` (task name -> `task_result(...)`) is there as-is, never rendered.
        """
        base = dict(self.host_vars.get(host, {}))
        base.setdefault("inventory_hostname", host)
        base.update(playbook_dir=self.playbook.base_dir, ansible_play_hosts=list(self.hosts))
        literal = {"results": results if results is not None else {}}
        return Vars(base, self.playbook.vars, self.extra_vars, literal=literal)


# -- planning ---------------------------------------------------------------------------------


def plan_playbook(
    playbook: Playbook,
    inventory: HostSource,
    *,
    extra_vars: Mapping[str, Any] | None = None,
    limit: str | None = None,
) -> PlaybookPlan:
    """Plan a playbook on an inventory; raises NoHostsMatched if the play selects no host.

    The inventory's `magic_vars(host)` (inventory_hostname, group_names, groups, ...) are used
    too when it has that method. Planning is deterministic: the same playbook, inventory, extra
    vars and limit give the same plan, so a job can be planned again from what it stored.
    """
    extra = dict(extra_vars or {})
    for name in RESERVED_VARS:
        if name in extra:
            raise UsageError(f"-e {name}=...: the variable name {name!r} is reserved")
    allowed = set(inventory.select(limit)) if limit else None
    try:
        selected = inventory.select(playbook.hosts)
    except PatternError as exc:
        raise type(exc)(exc.message, location=playbook.at("hosts")) from None
    play_hosts = tuple(h for h in selected if allowed is None or h in allowed)
    if not play_hosts:
        raise NoHostsMatched(
            f"no host of the play ({playbook.hosts}) is in --limit {limit}",
            location=playbook.at("hosts"),
        )
    tasks = [_planned_task(t, play_hosts, inventory, allowed) for t in _dependency_order(playbook)]
    batches = serial_batches(play_hosts, playbook.serial)
    runs = _runs(tasks, batches)
    host_vars: dict[str, dict[str, Any]] = {}
    magic = getattr(inventory, "magic_vars", None)
    for task in tasks:
        for host in task.hosts:
            if host not in host_vars:
                values = dict(magic(host)) if callable(magic) else {}
                values.update(inventory.host_vars(host))
                connection_of(host, values)
                host_vars[host] = values
    return PlaybookPlan(
        playbook=playbook,
        hosts=play_hosts,
        tasks=tuple(tasks),
        runs=tuple(runs),
        batches=batches,
        host_vars=host_vars,
        extra_vars=extra,
        limit=limit,
    )


def _dependency_order(playbook: Playbook) -> list[Task]:
    """Tasks so that each comes after those it needs; otherwise in file order."""
    done: set[str] = set()
    order: list[Task] = []
    waiting = list(playbook.tasks)
    while waiting:
        ready = next(t for t in waiting if all(n in done for n in t.needs))
        waiting.remove(ready)
        done.add(ready.name)
        order.append(ready)
    return order


def _planned_task(
    task: Task, play_hosts: tuple[str, ...], inventory: HostSource, allowed: set[str] | None
) -> PlannedTask:
    if task.hosts is None:
        hosts = play_hosts
    else:
        try:
            selected = inventory.select(task.hosts)
        except NoHostsMatched:
            selected = []
        except PatternError as exc:
            raise PatternError(exc.message, location=task.at("hosts")) from None
        hosts = tuple(h for h in selected if allowed is None or h in allowed)
    return PlannedTask(
        name=task.name,
        kind=task.kind,
        action=task.action,
        hosts=hosts,
        needs=task.needs,
        when=task.when,
        timeout=task.timeout,
        retries=task.retries,
        retry_delay=task.retry_delay,
        retry_backoff=task.retry_backoff,
        run_on_any=task.run_on_any,
        run_once=task.run_once,
        env=dict(task.env),
        cwd=task.cwd,
        location=task.location,
        task=task,
    )


def _runs(tasks: list[PlannedTask], batches: tuple[tuple[str, ...], ...]) -> list[TaskRun]:
    batch_of = {h: i for i, batch in enumerate(batches) for h in batch}
    by_task: dict[str, list[RunKey]] = {}
    keys_of: dict[str, set[RunKey]] = {}
    last_batch: dict[str, int] = {}  # the latest batch among a task's runs
    batch_of_run: dict[RunKey, int] = {}
    ancestors: dict[str, list[str]] = {}
    single = {t.name: t.single for t in tasks}
    runs: list[TaskRun] = []
    for task in tasks:
        ancestors[task.name] = list(
            dict.fromkeys(a for n in task.needs for a in (*ancestors[n], n))
        )
        if not task.hosts:
            keys = []
        elif task.run_on_any:
            keys = [RunKey(task.name, None)]
        elif task.run_once:
            keys = [RunKey(task.name, task.hosts[0])]
        else:
            keys = [RunKey(task.name, h) for h in task.hosts]
        for key in keys:
            needs: list[RunKey] = []
            # A run goes in its host's batch; a single run (once, any) in the first one.
            batch = 0 if task.single else batch_of.get(key.host or "", 0)
            for need in task.needs:
                same = RunKey(need, key.host)
                if not task.single and same in keys_of[need]:
                    needs.append(same)
                    batch = max(batch, batch_of_run[same])
                else:  # it runs elsewhere (or once): wait for all its runs
                    needs.extend(by_task[need])
                    batch = max(batch, last_batch[need])
            batch_of_run[key] = batch
            results_from: dict[str, RunKey] = {}
            for earlier in ancestors[task.name]:
                same = RunKey(earlier, key.host)
                if key.host is not None and same in keys_of[earlier]:
                    results_from[earlier] = same
                elif single[earlier] and by_task[earlier]:
                    results_from[earlier] = by_task[earlier][0]
            runs.append(
                TaskRun(
                    task=task.name,
                    host=key.host,
                    candidates=task.hosts if key.host is None else (key.host,),
                    batch=batch,
                    needs=tuple(dict.fromkeys(needs)),
                    results_from=results_from,
                )
            )
        by_task[task.name] = keys
        keys_of[task.name] = set(keys)
        last_batch[task.name] = max((batch_of_run[k] for k in keys), default=0)
    return runs


def serial_batches(
    hosts: Sequence[str], serial: Sequence[int | str]
) -> tuple[tuple[str, ...], ...]:
    """Split hosts into rolling batches as Ansible's `serial` does.

    Each value is a number of hosts or a percentage of all the play's hosts (rounded down, at
    least 1); the last value repeats; 0 or no serial at all means one batch of every host.
    """
    left = list(hosts)
    sizes = list(serial) or [0]
    batches: list[tuple[str, ...]] = []
    index = 0
    while left:
        size = _batch_size(sizes[index], len(hosts))
        if size <= 0:
            batches.append(tuple(left))
            break
        batches.append(tuple(left[:size]))
        left = left[size:]
        index = min(index + 1, len(sizes) - 1)
    return tuple(batches)


def _batch_size(value: int | str, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return int(int(value[:-1]) / 100.0 * total) or 1
    return int(value)


def stop_after_batch(failed: int, size: int, max_fail_percentage: float | None) -> bool:
    """Whether a play stops after a batch in which `failed` of `size` hosts failed.

    With `max_fail_percentage`, when more than that share failed (so 0 stops at the first
    failure); without it, only when every host of the batch failed (as Ansible does).
    """
    if size <= 0 or failed <= 0:
        return False
    if max_fail_percentage is None:
        return failed >= size
    return failed * 100 > max_fail_percentage * size


# -- rendering at run time --------------------------------------------------------------------


@dataclass(frozen=True)
class RenderedAction:
    """An action with its templates rendered for one host.

    `command`: the command line (command, shell) or the script's arguments ('' if none);
    `src`: absolute local path of the script or the copy's source; `dest`, `mode`: the copy's.
    """

    kind: str
    command: str = ""
    src: str | None = None
    dest: str | None = None
    mode: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None

    def shell_line(self, script_path: str | None = None) -> str:
        """The line to run on the host: the command (or the uploaded script at `script_path`
        with its arguments), after `cd CWD || exit 1` and `export NAME=VALUE` when set."""
        if self.kind == "copy":
            raise ValueError("a copy has no command line")
        if self.kind == "script":
            if script_path is None:
                raise ValueError("a script runs from the path it was uploaded to: pass script_path")
            body = shlex.quote(script_path) + (f" {self.command}" if self.command else "")
        else:
            body = self.command
        prefix = []
        if self.cwd:
            prefix.append(f"cd {shlex.quote(self.cwd)} || exit 1")
        if self.env:
            prefix.append(
                "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
            )
        return ("\n" if "\n" in body.rstrip("\n") else "; ").join([*prefix, body])


def _what(task: PlannedTask | Task, host: str | None) -> str:
    return f"task {task.name!r} on host {host!r}" if host else f"task {task.name!r}"


def render_action(
    task: PlannedTask | Task, host: str | None, context: Mapping[str, Any]
) -> RenderedAction:
    """Render a task's action for a host; raises TemplateError naming the task and host."""
    what = _what(task, host)
    action = task.action
    env = {k: render(v, context, what=f"{what}, env {k}") for k, v in task.env.items()}
    cwd = render(task.cwd, context, what=f"{what}, cwd") if task.cwd else None
    if action.kind == "copy":
        dest = render(action.dest or "", context, what=what)
        return RenderedAction(
            "copy", src=action.path, dest=dest, mode=action.mode, env=env, cwd=cwd
        )
    if action.argv is not None:
        line = shlex.join(render(a, context, what=what) for a in action.argv)
    elif action.kind == "command":
        line = _command_line(render(action.command or "", context, what=what), what)
    elif action.kind == "script":
        line = render(action.args or "", context, what=what).strip()
    else:
        line = render(action.command or "", context, what=what)
    return RenderedAction(action.kind, command=line, src=action.path, env=env, cwd=cwd)


def _command_line(rendered: str, what: str) -> str:
    """A `command` runs without a shell: its words, each quoted, so `;`, `|`, `$x` stay text."""
    try:
        words = shlex.split(rendered)
    except ValueError as exc:
        raise TemplateError(f"{what}: the command cannot be split into words: {exc}") from None
    if not words:
        raise TemplateError(f"{what}: the command is empty")
    return shlex.join(words)


def render_command(
    task: PlannedTask | Task,
    host: str | None,
    context: Mapping[str, Any],
    *,
    script_path: str | None = None,
) -> str:
    """The line to run for a command, shell or script task on a host (see `shell_line`)."""
    return render_action(task, host, context).shell_line(script_path)


def evaluate_when(task: PlannedTask | Task, host: str | None, context: Mapping[str, Any]) -> bool:
    """Whether the task runs on the host: its `when` (True when it has none)."""
    if task.when is None:
        return True
    return evaluate(task.when, context, what=f"{_what(task, host)}, when")


def task_result(
    stdout: str = "", stderr: str = "", rc: int | None = None, state: str = "success"
) -> dict[str, Any]:
    """What `results.<task>` holds for a finished run (`state` skipped: its `when` was false).

    stdout/stderr lose their final newline, as in Ansible; `*_lines` split them into lines.
    """
    out = stdout.rstrip("\r\n")
    err = stderr.rstrip("\r\n")
    return {
        "stdout": out,
        "stderr": err,
        "stdout_lines": out.splitlines(),
        "stderr_lines": err.splitlines(),
        "rc": rc,
        "state": state,
        "failed": state not in ("success", "skipped"),
        "skipped": state == "skipped",
    }


# -- extra vars -------------------------------------------------------------------------------


def parse_extra_vars(values: Sequence[str]) -> dict[str, Any]:
    """`-e` values merged in order: `key=value ...` (strings), `@file.yml`, or a JSON/YAML mapping."""
    merged: dict[str, Any] = {}
    for value in values:
        merged.update(_extra_vars(value))
    return merged


def _extra_vars(value: str) -> dict[str, Any]:
    text = value.strip()
    if text.startswith("@"):
        path = text[1:]
        try:
            with open(path, encoding="utf-8") as handle:
                body = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
            raise UsageError(f"-e @{path}: cannot read the file: {reason}") from None
        return _vars_mapping(body, path, f"-e @{path}")
    if text.startswith(("{", "[")):
        return _vars_mapping(text, "-e", "-e")
    out: dict[str, Any] = {}
    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"-e {value!r}: {exc}") from None
    for word in words:
        key, eq, item = word.partition("=")
        if not eq or not key:
            raise UsageError(f"-e {value!r}: expected key=value, @file.yml or a JSON mapping")
        _check_var_name(key, f"-e {value!r}", None)
        out[key] = item
    return out


def _vars_mapping(text: str, path: str, what: str) -> dict[str, Any]:
    inline = path == "-e"  # positions in a command-line value are not worth a file:line
    try:
        data, problems, source = load_yaml(text, path)
    except PlaybookError as exc:
        raise UsageError(
            f"{what}: {exc.message}", location=None if inline else exc.location
        ) from None
    if problems:
        at = None if inline else problems[0].location
        raise UsageError(f"{what}: {problems[0].message}", location=at)
    if data is None:
        return {}
    if not isinstance(data, dict):
        at = None if inline else SourceLocation(path, 1, 1)
        raise UsageError(f"{what}: extra vars must be a mapping", location=at)
    for key in data:
        _check_var_name(key, what, None if inline else source.key(data, key))
    return dict(data)


def _check_var_name(key: Any, what: str, at: SourceLocation | None) -> None:
    if not isinstance(key, str) or not key.isidentifier():
        raise UsageError(f"{what}: invalid variable name {key!r}", location=at)
    if key in RESERVED_VARS:
        raise UsageError(f"{what}: the variable name {key!r} is reserved", location=at)


# -- --check ----------------------------------------------------------------------------------


class _ResultText(str):
    """`results.<task>...` in --check: renders as `<results of task.stdout>`."""

    _path: str

    def __new__(cls, path: str) -> _ResultText:
        text = super().__new__(cls, f"<results of {path}>")
        text._path = path
        return text

    def __getattr__(self, name: str) -> _ResultText:
        if name.startswith("_"):
            raise AttributeError(name)
        return _ResultText(f"{self._path}.{name}")

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return _ResultText(f"{self._path}.{key}")
        return _ResultText(f"{self._path}[{key if isinstance(key, int) else '...'}]")


class _CheckResults(Mapping[str, Any]):
    """`results` in --check: any task's results, as placeholders."""

    def __getitem__(self, name: str) -> _ResultText:
        return _ResultText(name)

    def __getattr__(self, name: str) -> _ResultText:
        if name.startswith("_"):
            raise AttributeError(name)
        return _ResultText(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


@dataclass(frozen=True)
class CheckedRun:
    """One run as --check shows it: the line it would run, or why it would not."""

    run: TaskRun
    host: str  # the host whose variables rendered it (the first candidate for `run_on: any`)
    line: str | None  # what runs; None when skipped or in error
    when: bool | None = True  # False: skipped by `when`; None: decided at run time (uses results)
    error: str | None = None  # what went wrong (without the task and host, which are known)


def check_playbook(plan: PlaybookPlan) -> list[CheckedRun]:
    """Render every run's command as it would run, with placeholders for results.<task>."""
    checked: list[CheckedRun] = []
    for run in plan.runs:
        task = plan.task(run.task)
        host = run.host or run.candidates[0]
        context = plan.context(host, _CheckResults())
        when: bool | None = True
        try:
            if task.when is not None:
                # A condition on results is only known at run time.
                uses = "results" in variables(task.when, expression=True)
                when = None if uses else evaluate_when(task, host, context)
            line = _check_line(task, host, context) if when is not False else None
        except TemplateError as exc:
            prefix = _what(task, host) + ": "
            message = exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message
            checked.append(CheckedRun(run, host, None, when, message))
            continue
        checked.append(CheckedRun(run, host, line, when))
    return checked


def _check_line(task: PlannedTask, host: str, context: Mapping[str, Any]) -> str:
    action = render_action(task, host, context)
    if action.kind == "copy":
        mode = f" (mode {action.mode})" if action.mode else ""
        return f"copy {task.action.path_text} -> {action.dest}{mode}"
    return action.shell_line(task.action.path_text)


def format_check(plan: PlaybookPlan, checked: Sequence[CheckedRun]) -> str:
    """The text `easytask play --check` prints: the plan, then each task's runs and lines."""
    book = plan.playbook
    lines = [
        f"playbook {book.name} ({book.path}): {_count(len(plan.hosts), 'host')}: {', '.join(plan.hosts)}"
    ]
    if book.schedule is not None:
        zone = book.tz or "server time zone"
        lines.append(f"schedule: {book.schedule} ({zone}), catch_up: {book.catch_up}")
    if book.serial:
        shown = " ".join("[" + ", ".join(b) + "]" for b in plan.batches)
        serial = ", ".join(str(s) for s in book.serial)
        lines.append(f"serial: {serial} -> batches {shown}")
    if book.max_fail_percentage is not None:
        lines.append(f"max_fail_percentage: {book.max_fail_percentage:g}")
    if book.forks is not None:
        lines.append(f"forks: {book.forks}")
    by_task: dict[str, list[CheckedRun]] = {}
    for item in checked:
        by_task.setdefault(item.run.task, []).append(item)
    for task in plan.tasks:
        lines.append("")
        lines.append(_task_header(task))
        runs = by_task.get(task.name, [])
        if not runs:
            lines.append("  (no hosts)")
        for item in runs:
            who = f"any of {', '.join(item.run.candidates)}" if item.run.host is None else item.host
            if len(plan.batches) > 1:
                who += f" (batch {item.run.batch + 1})"
            if item.error is not None:
                lines.append(f"  {who}: ERROR {item.error}")
            elif item.when is False:
                lines.append(f"  {who}: skipped (when: {task.when})")
            else:
                note = f"  # if {task.when}" if item.when is None else ""
                text = (item.line or "").rstrip("\n").replace("\n", "\n" + " " * (len(who) + 4))
                lines.append(f"  {who}: {text}{note}")
    errors = sum(1 for c in checked if c.error is not None)
    lines.append("")
    lines.append(f"{_count(len(checked), 'run')}, {_count(errors, 'error')}")
    return "\n".join(lines)


def _task_header(task: PlannedTask) -> str:
    head = f"task {task.name} ({task.kind})"
    if task.run_on_any:
        head += " once on any host"
    elif task.run_once:
        head += " once"
    if task.needs:
        head += " needs " + ", ".join(task.needs)
    settings = []
    if task.timeout is not None:
        settings.append(f"timeout {_short(task.timeout)}")
    if task.retries:
        backoff = f" x{task.retry_backoff:g}" if task.retry_backoff != 1 else ""
        settings.append(f"retries {task.retries} every {_short(task.retry_delay)}{backoff}")
    if task.env:
        settings.append("env " + " ".join(task.env))
    return head + (" [" + ", ".join(settings) + "]" if settings else "")


def _short(seconds: float) -> str:
    """30s, 5m, 1h30m, 1.5s: a duration as a playbook would write it."""
    if seconds != int(seconds):
        return f"{seconds:g}s"
    out, left = "", int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out or "0s"


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def dumps_check(checked: Sequence[CheckedRun]) -> str:
    """--check as JSON lines (one object per run), for `--format json`."""
    return "\n".join(
        json.dumps(
            {
                "task": c.run.task,
                "host": c.run.host,
                "candidates": list(c.run.candidates),
                "batch": c.run.batch,
                "needs": [list(k) for k in c.run.needs],
                "line": c.line,
                "when": c.when,
                "error": c.error,
            }
        )
        for c in checked
    )
