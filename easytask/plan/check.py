"""`easytask play --check`: every run of a plan rendered up front, shown as text or JSON."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from easytask.errors import TemplateError
from easytask.facts import FACT_VARIABLES
from easytask.masking import Masker
from easytask.plan.loops import LoopItem
from easytask.plan.playbookplan import PlannedTask, PlaybookPlan, TaskRun
from easytask.plan.render import evaluate_when, render_action, run_label
from easytask.templating import TemplateLimit, variables
from easytask.vault import vault_values

__all__ = [
    "AT_RUN_NOTE",
    "CheckedRun",
    "check_limits",
    "check_playbook",
    "dumps_check",
    "format_check",
]


class _ResultText(str):
    """`results.<task>...` in --check: renders as `<results of task.stdout>` (`<fact ...>` for
    a fact, which only a live host knows)."""

    _path: str
    _kind: str

    def __new__(cls, path: str, kind: str = "results of") -> _ResultText:
        text = super().__new__(cls, f"<{kind} {path}>")
        text._path = path
        text._kind = kind
        return text

    def __getattr__(self, name: str) -> _ResultText:
        if name.startswith("_"):
            raise AttributeError(name)
        return _ResultText(f"{self._path}.{name}", self._kind)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return _ResultText(f"{self._path}.{key}", self._kind)
        index = key if isinstance(key, int) else "..."
        return _ResultText(f"{self._path}[{index}]", self._kind)


# Facts in --check: placeholders where the host's own are not known (agentless, or no agent).
AT_RUN_NOTE = "a loop over results: its items are known when it runs"

_CHECK_FACTS = {name: _ResultText(name, "fact") for name in FACT_VARIABLES}


class _CheckResults(Mapping[str, Any]):
    """`results` in --check: any task's results, as placeholders; a loop's as its list of
    items (see `loop_result`) whose results are placeholders."""

    def __init__(self, loops: Mapping[str, list[LoopItem]] | None = None) -> None:
        self._loops = dict(loops or {})

    def __getitem__(self, name: str) -> Any:
        if name in self._loops:
            return _loop_placeholder(name, self._loops[name])
        return _ResultText(name)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return self[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def __iter__(self) -> Any:
        return iter(())

    def __len__(self) -> int:
        return 0


def _loop_placeholder(name: str, items: list[LoopItem]) -> dict[str, Any]:
    def one(item: LoopItem) -> dict[str, Any]:
        path = f"{name}.results[{item.index}]"
        keys = ("stdout", "stderr", "stdout_lines", "stderr_lines", "rc", "state", "failed")
        known = {"item": item.value, "label": item.label, "index": item.index}
        return {**{k: _ResultText(f"{path}.{k}") for k in keys}, **known}

    flags = {k: _ResultText(f"{name}.{k}") for k in ("state", "failed", "skipped")}
    return {"results": [one(i) for i in items], **flags}


def _loops_seen(plan: PlaybookPlan, run: TaskRun) -> dict[str, list[LoopItem]]:
    """The items of the loops whose results a run may read (on its host)."""
    out: dict[str, list[LoopItem]] = {}
    for name, keys in run.results_from.items():
        if plan.task(name).loop is not None:
            found = (plan.run(k).item for k in keys)
            out[name] = [i for i in found if i is not None]
    return out


@dataclass(frozen=True)
class CheckedRun:
    """One run as --check shows it: the line it would run, or why it would not."""

    run: TaskRun
    host: str  # the host whose variables rendered it (the first candidate for `run_on: any`)
    line: str | None  # what runs; None when skipped or in error
    when: bool | None = True  # False: skipped by `when`; None: decided at run time (uses results)
    error: str | None = None  # what went wrong (without the task and host, which are known)


def check_playbook(plan: PlaybookPlan) -> list[CheckedRun]:
    """Render every run's command as it would run, with placeholders for results.<task>;
    values from an Ansible Vault show as `****`."""
    checked: list[CheckedRun] = []
    for run in plan.runs:
        task = plan.task(run.task)
        host = run.host or run.candidates[0]
        known = "ansible_facts" in plan.host_vars.get(host, {})
        facts = None if known else _CHECK_FACTS
        results = _CheckResults(_loops_seen(plan, run))
        context = plan.context(host, results, facts, plan.item_vars(run))
        mask = Masker(vault_values(plan.host_vars.get(host, {}), plan.playbook.vars))
        when: bool | None = True
        if run.empty_loop:
            checked.append(CheckedRun(run, host, None, False))
            continue
        if run.at_run:  # its items come from results: known on the host when it runs
            checked.append(CheckedRun(run, host, None, None))
            continue
        try:
            if task.when is not None:
                # A condition on results is only known at run time.
                uses = "results" in variables(task.when, expression=True)
                when = None if uses else evaluate_when(task, host, context)
            line = _check_line(task, host, context) if when is not False else None
        except TemplateError as exc:
            prefix = run_label(task, host) + ": "
            message = exc.message[len(prefix) :] if exc.message.startswith(prefix) else exc.message
            checked.append(CheckedRun(run, host, None, when, mask(message)))
            continue
        checked.append(CheckedRun(run, host, mask(line) if line is not None else None, when))
    return checked


def check_limits(plan: PlaybookPlan) -> None:
    """Raise TemplateLimit if a task's templates go past the limits on their work, rendered
    as --check does on the task's first host (results of earlier tasks as placeholders).

    Only the limits: any other template error is the run's, found when it starts."""
    seen: set[str] = set()
    for run in plan.runs:
        if run.task in seen:
            continue
        seen.add(run.task)
        if run.at_run:  # its items (and so its commands) are rendered when it runs
            continue
        task = plan.task(run.task)
        host = run.host or run.candidates[0]
        results = _CheckResults(_loops_seen(plan, run))
        context = plan.context(host, results, None, plan.item_vars(run))
        try:
            if task.when is not None and "results" not in variables(task.when, expression=True):
                evaluate_when(task, host, context)
            render_action(task, host, context)
        except TemplateLimit:
            raise
        except TemplateError:
            continue


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
            if item.run.item is not None:
                who += f" (item={item.run.item.shown})"
            if len(plan.batches) > 1:
                who += f" (batch {item.run.batch + 1})"
            if item.error is not None:
                lines.append(f"  {who}: ERROR {item.error}")
            elif item.run.empty_loop:
                lines.append(f"  {who}: skipped (the loop gave no item)")
            elif item.run.at_run:
                lines.append(f"  {who}: {AT_RUN_NOTE}")
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
    if task.loop is not None:
        head += " loop" + (f" as {task.loop.loop_var}" if task.loop.loop_var != "item" else "")
    if task.needs_implied:
        head += " after " + ", ".join(task.needs)
    elif task.needs:
        head += " needs " + ", ".join(task.needs)
    settings = []
    if task.timeout is not None:
        settings.append(f"timeout {_short(task.timeout)}")
    if task.retries:
        backoff = f" x{task.retry_backoff:g}" if task.retry_backoff != 1 else ""
        settings.append(f"retries {task.retries} every {_short(task.retry_delay)}{backoff}")
    if task.env:
        settings.append("env " + " ".join(task.env))
    if task.task.failed_when is not None:
        settings.append(f"failed_when {task.task.failed_when}")
    if task.task.changed_when is not None:
        settings.append(f"changed_when {task.task.changed_when}")
    if task.task.ignore_errors:
        settings.append("ignore_errors")
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
                **({"item": c.run.item.label} if c.run.item is not None else {}),
                **({"items": AT_RUN_NOTE} if c.run.at_run else {}),
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
