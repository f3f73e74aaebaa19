"""Planned playbook runs rendered when they start: the command line, `when`, results of earlier runs."""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from easytask.errors import TemplateError
from easytask.plan.loops import LoopItem
from easytask.plan.playbookplan import PlannedTask
from easytask.playbook import Task
from easytask.templating import evaluate, render

__all__ = [
    "RenderedAction",
    "evaluate_when",
    "loop_result",
    "render_action",
    "render_command",
    "run_label",
    "task_result",
]


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

    def shell_line(self, script_path: str | None = None, *, env: bool = True) -> str:
        """The line to run on the host: the command (or the uploaded script at `script_path`
        with its arguments), after `cd CWD || exit 1` and `export NAME=VALUE` when set.

        `env=False` leaves the exports out: the run passes `env` to the command another way,
        out of its command line."""
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
        if self.env and env:
            prefix.append(
                "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
            )
        return ("\n" if "\n" in body.rstrip("\n") else "; ").join([*prefix, body])


def run_label(task: PlannedTask | Task, host: str | None) -> str:
    """How messages name a run: `task 'x' on host 'h'` (or the task alone)."""
    return f"task {task.name!r} on host {host!r}" if host else f"task {task.name!r}"


def render_action(
    task: PlannedTask | Task, host: str | None, context: Mapping[str, Any]
) -> RenderedAction:
    """Render a task's action for a host; raises TemplateError naming the task and host."""
    what = run_label(task, host)
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
    return evaluate(task.when, context, what=f"{run_label(task, host)}, when")


def task_result(
    stdout: str = "",
    stderr: str = "",
    rc: int | None = None,
    state: str = "success",
    *,
    changed: bool = False,
) -> dict[str, Any]:
    """What `results.<task>` holds for a finished run (`state` skipped: its `when` was false).

    stdout/stderr lose their final newline, as in Ansible; `*_lines` split them into lines.
    `changed`: what changed_when said (or Ansible's default, see `plan.outcome`).
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
        "changed": changed,
    }


def loop_result(
    items: Sequence[tuple[LoopItem, Mapping[str, Any] | None]], loop_var: str = "item"
) -> dict[str, Any]:
    """What `results.<task>` holds for a loop on a host, in the shape Ansible registers a loop:
    `results`, each item's `task_result(...)` in item order with its `item` (and its
    `loop_var`), `label` and `index`; then the task's `state`, `failed` and `skipped`, and
    `changed` when any item changed.

    The state is the first item's that did not succeed or skip; skipped when every item
    skipped (or there was none); success otherwise. An item with no result yet (it never ran)
    counts as skipped."""
    results = []
    for item, result in items:
        one = dict(result) if result is not None else task_result(rc=None, state="skipped")
        one.update(item=item.value, label=item.label, index=item.index)
        one[loop_var] = item.value
        results.append(one)
    states = [r["state"] for r in results]
    bad = next((s for s in states if s not in ("success", "skipped")), None)
    state = bad or ("skipped" if all(s == "skipped" for s in states) else "success")
    return {
        "results": results,
        "state": state,
        "failed": bad is not None,
        "skipped": state == "skipped",
        "changed": any(r.get("changed") for r in results),
    }
