"""Job use cases: submit an ad hoc job or a playbook, run a schedule now, kill a run or a job."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from easytask.errors import APIError
from easytask.plan import PlaybookPlan
from easytask.scheduler.inflight import JobOptions
from easytask.scheduler.playbooks import submit_playbook
from easytask.service.context import Services
from easytask.service.files import file_digests
from easytask.service.planning import plan_file, plan_pattern
from easytask.service.scope import enforce_scope
from easytask.store.audit import AuditNote
from easytask.store.models import Job, Run, RunState, Schedule, User


async def submit_adhoc(
    services: Services,
    user: User,
    source: str,
    *,
    pattern: str,
    command: str,
    kind: str,
    name: str,
    options: JobOptions,
    one: bool = False,
    limit: str | None = None,
    extra_vars: dict[str, Any] | None = None,
    remote_user: str | None = None,
) -> tuple[Job, list[Run]]:
    """An ad hoc command (or checksum, copy, script, fetch) over a host pattern, audited with
    the job in one transaction; `one` picks the least busy host of those matched; `limit`,
    `extra_vars` and `remote_user` as `plan_adhoc` takes them."""
    planned = await plan_pattern(
        services, pattern, command, limit=limit, extra_vars=extra_vars, user=remote_user
    )
    if one:
        agents = [p for p in planned if p.connection == "agent"] or planned
        chosen = services.registry.least_busy([p.host for p in agents])
        planned = [p for p in agents if p.host == chosen]
    await enforce_scope(
        services,
        user,
        [p.host for p in planned],
        source,
        {"kind": kind, "pattern": pattern, "command": command},
    )
    action = options.file_action
    detail: dict[str, Any] = {
        "kind": kind,
        "pattern": pattern,
        "command": command,
        "hosts": [p.host for p in planned],
        "timeout": options.timeout,
    }
    if limit:
        detail["limit"] = limit
    if extra_vars is not None:
        detail["extra_vars"] = sorted(extra_vars)  # names; the rendered command is stored
    if remote_user:
        detail["user"] = remote_user
    if options.secret_env:
        detail["secrets"] = sorted(options.secret_env)  # names only, never values
    if action is not None and action.kind in ("copy", "script"):
        detail["files"] = await asyncio.to_thread(file_digests, action.src)
    return await services.engine.submit(
        planned,
        name=name[:200],
        pattern=pattern,
        command=command,
        options=options,
        user=user.name,
        source=source,
        audit=AuditNote(user.name, "job.submit", source, detail),
    )


async def submit_plan(
    services: Services, user: User, source: str, plan: PlaybookPlan, extra: dict[str, Any]
) -> tuple[Job, list[Run]]:
    """Start a planned playbook, its audit event stored with the job."""
    await enforce_scope(
        services,
        user,
        list(plan.all_hosts),
        source,
        {"kind": "playbook", "playbook": plan.name, "pattern": plan.playbook.hosts},
    )
    detail = {
        "kind": "playbook",
        "playbook": plan.name,
        **extra,
        "pattern": plan.playbook.hosts,
        "limit": plan.limit,
        **({"tags": list(plan.tags)} if plan.tags else {}),
        **({"skip_tags": list(plan.skip_tags)} if plan.skip_tags else {}),
        "hosts": list(plan.hosts),
        "extra_vars": sorted(plan.extra_vars),
        "sha256": hashlib.sha256(plan.playbook.text.encode()).hexdigest(),
    }
    return await submit_playbook(
        services.engine,
        plan,
        user=user.name,
        source=source,
        pending_timeout=services.pending_timeout,
        audit=AuditNote(user.name, "job.submit", source, detail),
    )


async def submit_scheduled(services: Services, path: Path, name: str) -> int:
    """Start the playbook of a schedule (as the user `schedule`); the job's id."""
    plan = await plan_file(services, path)
    source = f"schedule {name}"
    job, _ = await submit_playbook(
        services.engine,
        plan,
        user="schedule",
        source=source,
        pending_timeout=services.pending_timeout,
        kind="schedule",
        audit=AuditNote(
            "schedule",
            "job.submit",
            source,
            {"kind": "schedule", "playbook": plan.name, "hosts": list(plan.hosts)},
        ),
    )
    assert job.id is not None
    return job.id


async def schedule_path(services: Services, name: str) -> Path:
    """The playbook file of a schedule (404 if there is no such schedule)."""
    store = services.store
    rows = {r.name: r for r in await store.call(store.list_schedules)}
    if name not in rows:
        raise APIError(f"no schedule {name!r}", status=404)
    return Path(rows[name].path)


async def enforce_schedule_scope(
    services: Services, user: User, source: str, name: str, path: Path, kind: str
) -> None:
    """Refuse (403, audited) a scoped user's action on a schedule whose playbook reaches a host
    outside the scope."""
    if user.scope:
        plan = await plan_file(services, path)
        await enforce_scope(
            services, user, list(plan.all_hosts), source, {"kind": kind, "schedule": name}
        )


async def run_schedule_now(services: Services, user: User, source: str, name: str) -> int:
    """Start a schedule's playbook now, out of its timetable; the job's id."""
    path = await schedule_path(services, name)
    await enforce_schedule_scope(services, user, source, name, path, "schedule")
    job_id = await submit_scheduled(services, path, name)
    await services.audit(user.name, "schedule.run", source, {"schedule": name, "job": job_id})
    return job_id


async def set_schedule_enabled(
    services: Services, user: User, source: str, name: str, enabled: bool
) -> Schedule:
    """Switch a schedule on or off. A schedule fires with the server's authority, not its
    switcher's, so only a user without a scope may switch one on (403, audited); a scoped user
    may switch off one whose hosts are all in the scope."""
    store = services.store
    action = "enable" if enabled else "disable"
    path = await schedule_path(services, name)
    if enabled and user.scope:
        what = {"kind": "schedule.enable", "schedule": name, "scope": user.scope}
        await services.audit(user.name, "job.refused", source, what)
        raise APIError(
            f"refused: a schedule fires with the server's authority; only a user without a "
            f"scope may switch one on (yours is {user.scope!r})",
            status=403,
        )
    await enforce_schedule_scope(services, user, source, name, path, f"schedule.{action}")
    note = AuditNote(user.name, f"schedule.{action}", source, {"schedule": name})
    row = await store.call(store.update_schedule, name, note, enabled=enabled, next_fire=None)
    if row is None:
        raise APIError(f"no schedule {name!r}", status=404)
    return row


async def kill_job(services: Services, user: User, source: str, job_id: int) -> int:
    """Terminate every run of a job still in flight; how many runs were asked to end."""
    store = services.store
    if await store.call(store.get_job, job_id) is None:
        raise APIError(f"no job {job_id}", status=404)
    if user.scope:  # every host of the job in the scope, or nothing is killed
        hosts = [r.host for r in await store.call(store.job_runs, job_id)]
        await enforce_scope(services, user, hosts, source, {"kind": "job.kill", "job": job_id})
    count = services.engine.kill_job(job_id, user.name)
    if services.cluster is not None:  # the other servers were asked too: count them all
        runs = await store.call(store.job_runs, job_id)
        count = max(count, sum(r.state not in RunState.FINAL for r in runs))
    await services.audit(user.name, "job.kill", source, {"job": job_id, "runs_asked": count})
    return count


async def kill_run(services: Services, user: User, source: str, run_id: int) -> bool:
    """Terminate one run; whether it was asked to end."""
    store = services.store
    run = await store.call(store.get_run, run_id)
    if run is None:
        raise APIError(f"no run {run_id}", status=404)
    what = {"kind": "run.kill", "run": run_id, "job": run.job_id}
    await enforce_scope(services, user, [run.host], source, what)
    if run.state in RunState.FINAL:
        raise APIError(f"run {run_id} already ended ({run.state})", status=409)
    killed = services.engine.kill_run(run_id, user.name) or (
        services.cluster is not None  # asked of the server that executes it
    )
    await services.audit(
        user.name, "run.kill", source, {"run": run_id, "job": run.job_id, "host": run.host}
    )
    return killed
