"""A playbook job's rows: one queued row per planned run, where each planned run stands while
the job runs (`Slot`), what a later server process needs to plan the job again, and how a
stored row is read when it does."""

from __future__ import annotations

import asyncio
import hashlib
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easytask.errors import EasyTaskError
from easytask.plan import PlannedTask, PlaybookPlan, RunKey, TaskRun
from easytask.store.models import Run, RunState

ANY_HOST = "(any)"  # the host of a `run_on: any` run until it is placed


def job_runs_for(plan: PlaybookPlan) -> list[Run]:
    """One queued run row per planned run (run_on any: host chosen when it starts)."""
    runs = []
    for planned in plan.runs:
        task = plan.task(planned.task)
        host = planned.host or ANY_HOST
        connection = plan.connection(planned.host or planned.candidates[0])
        runs.append(
            Run(
                job_id=0,
                task=planned.name,
                host=host,
                connection=connection,
                agent=host if connection == "agent" else "",
                command=_preview(task),
            )
        )
    return runs


def _preview(task: PlannedTask) -> str:
    action = task.action
    if action.kind == "copy":
        return f"copy {action.path_text} -> {action.dest}"
    if action.kind == "script":
        return f"script {action.path_text}" + (f" {action.args}" if action.args else "")
    if action.argv is not None:
        return shlex.join(action.argv)
    return action.command or ""


@dataclass
class Slot:
    """Where a planned run stands: its current row, final state, result for `results.<task>`."""

    planned: TaskRun
    run: Run
    done: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = RunState.QUEUED
    skipped_by_when: bool = False
    result: dict[str, Any] | None = None
    ignored: bool = False  # it failed, and its task's ignore_errors lets the play go past it
    resumed: bool = False  # its row was started (or a retry queued) by a previous server process
    # a loop over results (`TaskRun.at_run`) once its items are rendered: their runs, in order
    members: list[RunKey] | None = None


def task_order(plan: PlaybookPlan) -> list[dict[str, Any]]:
    """The job's tasks in the order they run, each with the tasks it needs (kept in `job.vars`
    for the job page's matrix)."""
    return [
        {"name": task.name, "needs": list(task.needs), "implied": task.needs_implied}
        for task in plan.tasks
    ]


def resume_spec(plan: PlaybookPlan) -> dict[str, Any]:
    """What a later server process needs to plan the same job again (kept in `job.vars`).

    Secret extra vars are left out: they wait in the job's secrets file (mode 0600) instead.
    """
    secret = set(plan.playbook.secrets)
    return {
        "playbook": str(Path(plan.playbook.path).resolve()),
        "sha256": hashlib.sha256(plan.playbook.text.encode()).hexdigest(),
        "limit": plan.limit,
        "tags": list(plan.tags),
        "skip_tags": list(plan.skip_tags),
        "extra_vars": {k: v for k, v in plan.extra_vars.items() if k not in secret},
        **({"become": plan.become.as_dict()} if plan.become.as_dict() else {}),
        **({"warnings": list(plan.warnings)} if plan.warnings else {}),
    }


class ResumeError(EasyTaskError):
    """The playbook job cannot be continued after the server restarted."""


def check_resumable(plan: PlaybookPlan, spec: dict[str, Any]) -> None:
    """Raise ResumeError unless `plan` was made from the very playbook text the job started with."""
    digest = hashlib.sha256(plan.playbook.text.encode()).hexdigest()
    if digest != spec.get("sha256"):
        raise ResumeError(f"{spec.get('playbook')} changed since the job started")


def item_of(name: str, task: str) -> bool:
    """Whether a run's name is that of an item of a task's loop (`task (item=label)`)."""
    return name.startswith(task + " (item=") and name.endswith(")")


def retry_due(run: Run, task: PlannedTask) -> bool:
    """Whether the retry loop would have queued another attempt after this ended one."""
    return (
        run.state in (RunState.FAILED, RunState.TERMINATED, RunState.UNREACHABLE)
        and run.attempt <= task.retries
        and "killed by" not in run.reason
        and not run.reason.startswith("internal error")
        and (run.started_at is not None or run.state == RunState.UNREACHABLE)
    )
