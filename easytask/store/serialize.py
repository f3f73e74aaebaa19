"""Stored rows as the API returns them: jobs, runs, schedules, deliveries, users and tokens."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from operator import attrgetter
from typing import Any

from sqlalchemy import Row

from easytask.store.models import (
    ApiToken,
    Credential,
    Job,
    Run,
    Schedule,
    User,
    WebhookDelivery,
    as_utc,
)


def iso_time(value: Any) -> str | None:
    """A stored time as ISO 8601 (a naive one is UTC)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.isoformat()


def iso_utc(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC (SQLite gives times back without a zone)."""
    if value is None:
        return None
    return str(as_utc(value).isoformat())


def job_dict(job: Job) -> dict[str, Any]:
    """A job as the API returns it."""
    return {
        "id": job.id,
        "kind": job.kind,
        "name": job.name,
        "pattern": job.pattern,
        "command": job.command,
        "submitted_by": job.submitted_by,
        "source": job.source,
        "state": job.state,
        "created_at": iso_time(job.created_at),
        "finished_at": iso_time(job.finished_at),
        "timeout": job.timeout,
        "warnings": job_warnings(job),
    }


def job_warnings(job: Job) -> list[str]:
    """What the job was submitted with a warning about (connection variables of its hosts that
    are not honoured), kept in `job.vars`."""
    if '"warnings"' not in job.vars:
        return []
    try:
        found = json.loads(job.vars).get("warnings")
    except (ValueError, AttributeError):
        return []
    return [str(w) for w in found] if isinstance(found, list) else []


def run_duration(run: Run | Row[Any]) -> float | None:
    """Seconds from a run's start to its end; None unless it has both."""
    if run.started_at and run.finished_at:
        return float((run.finished_at - run.started_at).total_seconds())
    return None


def _time_of(name: str) -> Callable[[Any], str | None]:
    get = attrgetter(name)
    return lambda run: iso_time(get(run))


# each field of a run as `run_dict` gives it, alone (a client may ask for a few of a job's
# thousands of runs: tests/test_api_jobs.py holds the two to the same values)
RUN_VALUES: dict[str, Callable[[Any], Any]] = {
    "id": attrgetter("id"),
    "job": attrgetter("job_id"),
    **{
        name: attrgetter(name)
        for name in (
            "task",
            "host",
            "connection",
            "agent",
            "command",
            "state",
            "attempt",
            "exit_code",
            "signal",
            "reason",
        )
    },
    **{name: _time_of(name) for name in ("created_at", "started_at", "finished_at")},
    "duration": run_duration,
    **{
        name: attrgetter(name)
        for name in ("out_bytes", "out_lines", "truncated", "dropped_lines", "dropped_bytes")
    },
}
RUN_KEYS = tuple(RUN_VALUES)


def run_dict(run: Run | Row[Any]) -> dict[str, Any]:
    """A run as the API returns it (from its model object or a row of its fields)."""
    return {
        "id": run.id,
        "job": run.job_id,
        "task": run.task,
        "host": run.host,
        "connection": run.connection,
        "agent": run.agent,
        "command": run.command,
        "state": run.state,
        "attempt": run.attempt,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "reason": run.reason,
        "created_at": iso_time(run.created_at),
        "started_at": iso_time(run.started_at),
        "finished_at": iso_time(run.finished_at),
        "duration": run_duration(run),
        "out_bytes": run.out_bytes,
        "out_lines": run.out_lines,
        "truncated": run.truncated,
        "dropped_lines": run.dropped_lines,
        "dropped_bytes": run.dropped_bytes,
    }


def schedule_dict(row: Schedule) -> dict[str, Any]:
    """A schedule as the API returns it."""
    iso = iso_utc
    return {
        "name": row.name,
        "path": row.path,
        "cron": row.cron,
        "tz": row.tz,
        "catch_up": row.catch_up,
        "enabled": row.enabled,
        "next_fire": iso(row.next_fire),
        "last_fire": iso(row.last_fire),
        "last_job": row.last_job,
    }


def delivery_dict(row: WebhookDelivery, *, details: bool = False) -> dict[str, Any]:
    """A delivery attempt as the API returns it: to admins (`details`) with its URL, HTTP
    status, error and duration; to anyone else only whether it was delivered (an error can
    tell which addresses and ports answer)."""
    data: dict[str, Any] = {
        "id": row.id,
        "job": row.job_id,
        "delivery": row.delivery,
        "event": row.event,
        "attempt": row.attempt,
        "at": iso_time(row.at),
        "ok": row.ok,
        "result": "delivered" if row.ok else "failed",
    }
    if details:
        data.update(
            url=row.url,
            status_code=row.status_code,
            error=row.error,
            duration_ms=row.duration_ms,
        )
    return data


def user_dict(user: User) -> dict[str, object]:
    """A user as the API returns it (never the hash)."""
    return {
        "name": user.name,
        "role": user.role,
        "scope": user.scope,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat() if user.created_at else None,
    }


def token_dict(row: ApiToken, owner: str) -> dict[str, object]:
    """A token as the API lists it: never the secret, never its hash."""
    return {
        "id": row.id,
        "name": row.name,
        "user": owner,
        "created_at": iso_utc(row.created_at),
        "expires_at": iso_utc(row.expires_at),
        "last_used": iso_utc(row.last_used),
        "revoked": row.revoked,
    }


def credential_dict(row: Credential) -> dict[str, object]:
    """A credential as the API lists it: never its value, sealed or not."""
    return {
        "name": row.name,
        "kind": row.kind,
        "scope": row.scope,
        "key_id": row.key_id,
        "created_by": row.created_by,
        "created_at": iso_utc(row.created_at),
        "updated_by": row.updated_by,
        "updated_at": iso_utc(row.updated_at),
        "last_used_at": iso_utc(row.last_used_at),
        "last_used_by": row.last_used_by,
    }
