"""How a playbook run's end is judged: `failed_when`, `changed_when` and `ignore_errors` (pure).

A run that ran its command to an exit code (or a copy that succeeded) is judged by its task's
expressions, evaluated in the sandboxed templating over the run's result (`rc`, `stdout`,
`stderr`, `stdout_lines`, `stderr_lines`) and the task's variables. `failed_when` replaces the
exit code's verdict; `changed_when` sets whether the run changed something. The expressions see
at most the first EXPRESSION_TEXT characters of stdout and of stderr.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from easytask.errors import TemplateError
from easytask.playbook import Task
from easytask.templating import evaluate

__all__ = [
    "CHANGED_WHEN",
    "EXPRESSION_TEXT",
    "FAILED_WHEN",
    "ResultScope",
    "Verdict",
    "default_changed",
    "ignored",
    "judge",
    "judged",
    "result_vars",
]

EXPRESSION_TEXT = 1_000_000  # characters of stdout, and of stderr, an expression sees
FAILED_WHEN = "failed_when"  # timeline events: what each expression gave
CHANGED_WHEN = "changed_when"
SUCCESS = "success"
FAILED = "failed"


@dataclass(frozen=True)
class Verdict:
    """A judged run: its state and reason, whether it changed something, and the timeline
    notes (event kind, detail) that tell an auditor why. `error`: an expression could not be
    evaluated (a fault of the playbook: the run fails and ignore_errors does not cover it)."""

    state: str
    reason: str
    changed: bool
    notes: tuple[tuple[str, str], ...] = ()
    error: bool = False


def result_vars(rc: int | None, stdout: str, stderr: str) -> dict[str, Any]:
    """The variables an expression reads of the run's result (final newline dropped, as in
    `results.<task>`)."""
    out = stdout.rstrip("\r\n")
    err = stderr.rstrip("\r\n")
    return {
        "rc": rc,
        "stdout": out,
        "stderr": err,
        "stdout_lines": out.splitlines(),
        "stderr_lines": err.splitlines(),
    }


class ResultScope(Mapping[str, Any]):
    """The task's variables with the run's result over them."""

    def __init__(self, context: Mapping[str, Any], result: Mapping[str, Any]) -> None:
        self._context = context
        self._result = dict(result)

    def __getitem__(self, name: str) -> Any:
        if name in self._result:
            return self._result[name]
        return self._context[name]

    def __contains__(self, name: object) -> bool:
        return name in self._result or name in self._context

    def __iter__(self) -> Iterator[str]:
        yield from self._result
        yield from (k for k in self._context if k not in self._result)

    def __len__(self) -> int:
        return len(self._result) + sum(1 for k in self._context if k not in self._result)


def judged(task: Task, state: str, rc: int | None) -> bool:
    """Whether a run's end goes through its task's expressions: it has some, and the run ran to
    an exit code (or succeeded without one, as a copy does). A run that was killed, timed out,
    found its host unreachable or failed before its command ended keeps its state."""
    if task.failed_when is None and task.changed_when is None:
        return False
    return state == SUCCESS or (state == FAILED and rc is not None)


def default_changed(task: Task, state: str, reason: str) -> bool:
    """`changed` without `changed_when`, as Ansible's modules report it: a command, shell or
    script that succeeded changed something; a copy did when it wrote a file."""
    if state != SUCCESS:
        return False
    if task.kind == "copy":
        return reason.startswith("changed")
    return True


def ignored(task: Task, verdict_state: str, error: bool = False) -> bool:
    """Whether a run's end is a failure that `ignore_errors` lets the play go past. It covers a
    run that ended failed (an exit code, a failed_when verdict, a failed copy); not an
    unreachable host, a killed or timed-out run, nor an error in the playbook itself."""
    return task.ignore_errors and verdict_state == FAILED and not error


def judge(
    task: Task,
    host: str | None,
    context: Mapping[str, Any],
    *,
    state: str,
    reason: str,
    rc: int | None,
    stdout: str,
    stderr: str,
    cut: bool = False,
) -> Verdict:
    """A run's end through its task's `failed_when` and `changed_when` (see `judged`).

    `stdout`/`stderr` are what the expressions see (at most EXPRESSION_TEXT characters each;
    `cut` when they were cut there). An expression that cannot be evaluated fails the run with
    a message naming the task, the host and the expression."""
    scope = ResultScope(context, result_vars(rc, stdout, stderr))
    label = f"task {task.name!r}" + (f" on host {host!r}" if host else "")
    code = "no exit code" if rc is None else f"exit code {rc}"
    seen = f"; it saw the first {EXPRESSION_TEXT} characters of the output" if cut else ""
    notes: list[tuple[str, str]] = []
    given = reason
    changed: bool | None = None
    if task.changed_when is not None:
        what = f"{label}, changed_when {task.changed_when!r}"
        try:
            changed = evaluate(task.changed_when, scope, what=what)
        except TemplateError as exc:
            return Verdict(FAILED, str(exc), False, ((CHANGED_WHEN, str(exc)),), error=True)
        said = "changed" if changed else "not changed"
        why = f"changed_when {task.changed_when} is {_word(changed)} ({code})"
        notes.append((CHANGED_WHEN, f"{why}: {said}{seen}"))
    if task.failed_when is not None:
        what = f"{label}, failed_when {task.failed_when!r}"
        try:
            failed = evaluate(task.failed_when, scope, what=what)
        except TemplateError as exc:
            return Verdict(FAILED, str(exc), False, ((FAILED_WHEN, str(exc)),), error=True)
        verdict = FAILED if failed else SUCCESS
        why = f"failed_when {task.failed_when} is {_word(failed)} ({code})"
        notes.append((FAILED_WHEN, f"{why}: {verdict}{seen}"))
        if failed:
            reason = why
        elif state != SUCCESS:
            reason = f"{code}, ok by failed_when {task.failed_when} (false)"
        state = verdict
    if changed is None:
        changed = default_changed(task, state, given)
    return Verdict(state, reason, changed, tuple(notes))


def _word(value: bool) -> str:
    return "true" if value else "false"
