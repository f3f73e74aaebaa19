"""How the console shows things: times, durations, run and job rows, playbook rows."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from easytask.store.models import Job, Run, RunState, as_utc

FAILED_STATES = (RunState.FAILED, RunState.TERMINATED, RunState.UNREACHABLE)


def fmt_time(value: datetime | None) -> str:
    """A stored time as `YYYY-MM-DD HH:MM:SS` UTC."""
    value = as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def fmt_duration(seconds: float | None) -> str:
    """Seconds as `0.42s`, `12.3s`, `4m 05s` or `2h 03m`."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from start to end, if both are known."""
    start, end = as_utc(start), as_utc(end)
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def run_row(run: Run, submitted_by: str = "") -> dict[str, Any]:
    """A run as the templates show it."""
    return {
        "id": run.id,
        "job": run.job_id,
        "task": run.task,
        "host": run.host,
        "agent": run.agent,
        "connection": run.connection,
        "command": run.command,
        "state": run.state,
        "attempt": run.attempt,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "reason": run.reason,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration": between(run.started_at, run.finished_at),
        "wait": between(run.created_at, run.started_at),
        "user": submitted_by,
        "out_lines": run.out_lines,
        "out_bytes": run.out_bytes,
    }


def job_row(job: Job, progress: dict[int, dict[str, int]]) -> dict[str, Any]:
    """A job as the templates show it, with its runs' progress."""
    states = progress.get(job.id or 0, {})
    total = sum(states.values())
    done = sum(n for s, n in states.items() if s in RunState.FINAL)
    return {
        "id": job.id,
        "name": job.name,
        "pattern": job.pattern,
        "command": job.command,
        "state": shown_state(job.state, states),
        "user": job.submitted_by,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "total": total,
        "done": done,
        "failed": sum(n for s, n in states.items() if s in FAILED_STATES),
    }


def shown_state(state: str, run_states: Mapping[str, int]) -> str:
    """A job's state for people: `running` as soon as one of its runs has left the queue."""
    if state == RunState.QUEUED and any(n and s != RunState.QUEUED for s, n in run_states.items()):
        return RunState.RUNNING
    return state


def playbook_row(entry: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A listed playbook as the page shows it: times parsed, the URLs its buttons post to."""
    row = dict(entry)
    row["errors"] = [{**e, "shown": compiler_style(e)} for e in entry["errors"]]
    schedule = entry.get("schedule")
    if schedule is None:
        row["run_url"] = f"/api/playbooks/{quote(entry['file'], safe='')}/run"
        return row
    name = quote(schedule["name"], safe="")
    shown = dict(schedule)
    for key in ("next_fire", "last_fire"):
        shown[key] = datetime.fromisoformat(schedule[key]) if schedule[key] else None
    nxt = shown["next_fire"]
    shown["next_in"] = (nxt - now).total_seconds() if nxt is not None else None
    shown["next_local"] = ""
    if nxt is not None and schedule["tz"] != "UTC":
        try:
            shown["next_local"] = nxt.astimezone(ZoneInfo(schedule["tz"])).strftime(
                "%Y-%m-%d %H:%M %Z"
            )
        except (KeyError, ValueError):
            pass
    shown["toggle"] = "disable" if schedule["enabled"] else "enable"
    shown["toggle_url"] = f"/api/schedules/{name}/{shown['toggle']}"
    row["schedule"] = shown
    row["run_url"] = f"/api/schedules/{name}/run"
    return row


def compiler_style(problem: dict[str, Any]) -> str:
    """`file:line:col: message`, then the offending line and a caret under the column."""
    text = str(problem["text"])
    if problem.get("source") is not None:
        text += "\n    " + str(problem["source"])
        if problem.get("col"):
            text += "\n    " + " " * (int(problem["col"]) - 1) + "^"
    return text
