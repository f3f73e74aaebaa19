"""Schedules stored in the database: check, create, edit, delete, pause, resume, run now and
fire them. A stored schedule runs a job template (with parameters), a playbook of the server
(with limit and vars) or an ad hoc command (over a pattern). It fires with the server's
authority as the user `schedule`, through the same paths as a launch from the API, so scope,
approvals and the audit apply; which server fires it is decided by
`easytask.scheduler.schedules` (one fire record per fire time, across servers)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from easytask.cron import Cron
from easytask.errors import APIError, EasyTaskError
from easytask.scheduler.inflight import JobOptions
from easytask.service import approvalrules, approvals, jobs
from easytask.service.context import Services
from easytask.service.planning import plan_file
from easytask.service.playbooks import playbook_path
from easytask.service.scope import enforce_scope
from easytask.service.templates import definition_of, get_template, template_hosts
from easytask.store.audit import AuditNote
from easytask.store.models import Schedule, User
from easytask.store.serialize import schedule_dict

KINDS = ("template", "playbook", "adhoc")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SHOWN_FIRES = 3  # next fire times shown in the list and on a schedule's page
# The user a stored schedule fires as: the server's authority (no scope), as file schedules.
FIRING_USER = approvalrules.SCHEDULE_USER


class ScheduleInvalid(APIError):
    """A schedule that cannot be stored; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.problem = message


def next_fires(
    cron: str, tz: str, now: datetime | None = None, count: int = SHOWN_FIRES
) -> list[datetime]:
    """The next `count` fire times (aware, in the schedule's time zone); [] if it cannot fire."""
    try:
        parsed = Cron.parse(cron)
        zone = ZoneInfo(tz)
    except (ValueError, ZoneInfoNotFoundError):
        return []
    at = (now or datetime.now(UTC)).astimezone(zone)
    out = []
    for _ in range(count):
        try:
            at = parsed.next_after(at, zone)
        except ValueError:
            break
        out.append(at)
    return out


def stored_target(row: Schedule) -> dict[str, Any]:
    """What a stored schedule runs (empty for a file schedule)."""
    try:
        target = json.loads(row.target or "{}")
    except ValueError:
        return {}
    return target if isinstance(target, dict) else {}


def schedule_view(row: Schedule, now: datetime | None = None) -> dict[str, Any]:
    """A schedule as the API returns it: its fields, where it comes from, what it runs and its
    next fire times."""
    data = schedule_dict(row)
    data["origin"] = row.origin
    data["read_only"] = row.origin == "file"
    if row.origin == "db":
        data["target"] = stored_target(row)
        data["created_by"] = row.created_by
    else:
        data["target"] = {"kind": "playbook-file", "path": row.path}
    data["next_fires"] = [t.isoformat() for t in next_fires(row.cron, row.tz, now)]
    return data


# -- checking -------------------------------------------------------------------------------


def _text(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise ScheduleInvalid(key, "is required")
        return ""
    if not isinstance(value, str):
        raise ScheduleInvalid(key, "must be a string")
    return value.strip()


async def check_spec(services: Services, data: Any, name: str | None = None) -> dict[str, Any]:
    """The checked fields of a schedule to store; ScheduleInvalid (400) naming the field."""
    if not isinstance(data, Mapping):
        raise ScheduleInvalid("body", "must be an object")
    given = _text(data, "name") or (name or "")
    if not given:
        raise ScheduleInvalid("name", "is required")
    if name is not None and given != name:
        raise ScheduleInvalid("name", f"a schedule keeps its name ({name!r})")
    if not NAME_RE.match(given):
        raise ScheduleInvalid("name", "letters, digits, '.', '_' and '-', at most 64")
    cron = _text(data, "cron", required=True)
    try:
        parsed = Cron.parse(cron)
    except ValueError as exc:
        raise ScheduleInvalid("cron", str(exc)) from exc
    tz = _text(data, "tz") or "UTC"
    try:
        zone = ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ScheduleInvalid("tz", f"unknown time zone {tz!r}") from exc
    try:
        parsed.next_after(datetime.now(UTC), zone)
    except ValueError as exc:
        raise ScheduleInvalid("cron", str(exc)) from exc
    enabled = data.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ScheduleInvalid("enabled", "must be true or false")
    catch_up = _text(data, "catch_up") or "none"
    if catch_up not in ("none", "one"):
        raise ScheduleInvalid("catch_up", "must be none or one")
    target = await check_target(services, data)
    return {
        "name": given,
        "cron": parsed.text,
        "tz": tz,
        "enabled": enabled,
        "catch_up": catch_up,
        "target": target,
    }


async def check_target(services: Services, data: Mapping[str, Any]) -> dict[str, Any]:
    """What the schedule runs, checked: the template exists and takes the parameters, the
    playbook is in the playbooks directory, the command has a pattern."""
    kind = _text(data, "kind", required=True)
    if kind not in KINDS:
        raise ScheduleInvalid("kind", f"must be one of {', '.join(KINDS)}")
    limit = _text(data, "limit")
    if kind == "template":
        template = _text(data, "template", required=True)
        try:
            row = await get_template(services, template)
        except APIError as exc:
            raise ScheduleInvalid("template", f"no template {template!r}") from exc
        params = data.get("params") or {}
        values, problems = approvals.launch_values(definition_of(row), params)
        if problems:
            field, message = next(iter(problems.items()))
            where = "params" if field == "params" else f"params.{field}"
            raise ScheduleInvalid(where, message)
        return {"kind": kind, "template": template, "params": values, "limit": limit}
    if kind == "playbook":
        playbook = _text(data, "playbook", required=True)
        try:
            playbook_path(services, playbook)
        except APIError as exc:
            raise ScheduleInvalid("playbook", exc.message or "unknown playbook") from exc
        extra = data.get("vars") or {}
        if not isinstance(extra, Mapping):
            raise ScheduleInvalid("vars", "must be an object of variables")
        return {"kind": kind, "playbook": playbook, "limit": limit, "vars": dict(extra)}
    command = _text(data, "command", required=True)
    pattern = _text(data, "pattern", required=True)
    inventory = await services.merged_inventory()
    try:
        inventory.select(pattern)
    except EasyTaskError as exc:
        raise ScheduleInvalid("pattern", str(exc)) from exc
    return {"kind": kind, "command": command, "pattern": pattern, "limit": limit}


# -- management -----------------------------------------------------------------------------


async def get_schedule(services: Services, name: str) -> Schedule:
    """The schedule of this name, from a file or stored (404 if there is none)."""
    store = services.store
    rows = {r.name: r for r in await store.call(store.list_schedules)}
    if name not in rows:
        raise APIError(f"no schedule {name!r}", status=404)
    return rows[name]


async def _stored(services: Services, name: str) -> Schedule:
    row = await get_schedule(services, name)
    if row.origin != "db":
        raise APIError(
            f"schedule {name!r} is read from the playbook {row.path}; change it there",
            status=409,
        )
    return row


def _audit_detail(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "schedule": spec["name"],
        "cron": spec["cron"],
        "tz": spec["tz"],
        "enabled": spec["enabled"],
        "target": spec["target"],
    }


async def create_schedule(services: Services, user: User, source: str, data: Any) -> Schedule:
    """Store a new schedule (409 if the name is taken), audited in the same transaction."""
    spec = await check_spec(services, data)
    row = Schedule(
        name=spec["name"],
        path="",
        cron=spec["cron"],
        tz=spec["tz"],
        catch_up=spec["catch_up"],
        enabled=spec["enabled"],
        origin="db",
        target=json.dumps(spec["target"], sort_keys=True),
        created_by=user.name,
    )
    store = services.store
    note = AuditNote(user.name, "schedule.create", source, _audit_detail(spec))
    created = await store.call(store.create_schedule, row, note)
    if created is None:
        raise APIError(f"schedule {spec['name']!r} already exists", status=409)
    return created


async def update_schedule(
    services: Services, user: User, source: str, name: str, data: Any
) -> Schedule:
    """Replace a stored schedule's fields (404 if none, 409 for a file schedule), audited."""
    await _stored(services, name)
    spec = await check_spec(services, data, name)
    store = services.store
    note = AuditNote(user.name, "schedule.update", source, _audit_detail(spec))
    row = await store.call(
        store.update_schedule,
        name,
        note,
        cron=spec["cron"],
        tz=spec["tz"],
        catch_up=spec["catch_up"],
        enabled=spec["enabled"],
        target=json.dumps(spec["target"], sort_keys=True),
        next_fire=None,
    )
    if row is None:
        raise APIError(f"no schedule {name!r}", status=404)
    return row


async def delete_schedule(services: Services, user: User, source: str, name: str) -> None:
    """Delete a stored schedule and its fire records (404 if none, 409 for a file schedule)."""
    await _stored(services, name)
    store = services.store
    note = AuditNote(user.name, "schedule.delete", source, {"schedule": name})
    if not await store.call(store.delete_schedule, name, note):
        raise APIError(f"no schedule {name!r}", status=404)


# -- firing ---------------------------------------------------------------------------------


async def target_hosts(services: Services, row: Schedule) -> list[str]:
    """Every host a schedule may reach (for a scoped user's run now or pause)."""
    if row.origin != "db":
        plan = await plan_file(services, Path(row.path))
        return list(plan.all_hosts)
    target = stored_target(row)
    if target.get("kind") == "template":
        definition = definition_of(await get_template(services, target["template"]))
        return await template_hosts(services, definition)
    if target.get("kind") == "playbook":
        plan = await plan_file(services, playbook_path(services, target["playbook"]))
        return list(plan.all_hosts)
    inventory = await services.merged_inventory()
    return list(inventory.select(str(target.get("pattern", ""))))


async def fire_stored(services: Services, row: Schedule) -> int:
    """Start what a stored schedule runs, as the user `schedule` with source `schedule NAME`;
    the job's id (one that needs approval — its template's or an approval rule's: the job
    awaiting approval, which an approver starts as the schedule)."""
    target = stored_target(row)
    user = FIRING_USER
    source = f"schedule {row.name}"
    limit = target.get("limit") or None
    kind = target.get("kind")
    if kind == "template":
        launched = await approvals.launch(
            services,
            user,
            source,
            target["template"],
            target.get("params") or {},
            limit,
            services.approval_hook,
        )
        job = launched.job
    elif kind == "playbook":
        path = playbook_path(services, target["playbook"])
        plan = await plan_file(services, path, target.get("vars") or {}, limit)
        job, _ = await jobs.submit_plan(
            services, user, source, plan, {"file": path.name, "schedule": row.name}
        )
    elif kind == "adhoc":
        job, _ = await jobs.submit_adhoc(
            services,
            user,
            source,
            pattern=target["pattern"],
            command=target["command"],
            kind="command",
            name=row.name,
            options=JobOptions(pending_timeout=services.pending_timeout),
            limit=limit,
        )
    else:
        raise APIError(f"schedule {row.name!r} runs nothing known ({kind!r})", status=409)
    assert job.id is not None
    return job.id


async def run_now(services: Services, user: User, source: str, name: str) -> int:
    """Start a schedule now, out of its timetable (a scoped user: every host in the scope);
    the job's id, audited as `schedule.run`."""
    row = await get_schedule(services, name)
    if row.origin != "db":
        return await jobs.run_schedule_now(services, user, source, name)
    if user.scope:
        hosts = await target_hosts(services, row)
        await enforce_scope(services, user, hosts, source, {"kind": "schedule", "schedule": name})
    job_id = await fire_stored(services, row)
    await services.audit(user.name, "schedule.run", source, {"schedule": name, "job": job_id})
    return job_id


async def set_enabled(
    services: Services, user: User, source: str, name: str, enabled: bool
) -> Schedule:
    """Pause or resume a schedule. A schedule fires with the server's authority, so only a
    user without a scope may resume one (403, audited); a scoped user may pause one whose
    hosts are all in the scope."""
    row = await get_schedule(services, name)
    if row.origin != "db":
        return await jobs.set_schedule_enabled(services, user, source, name, enabled)
    action = "enable" if enabled else "disable"
    if enabled and user.scope:
        refused = {"kind": "schedule.enable", "schedule": name, "scope": user.scope}
        await services.audit(user.name, "job.refused", source, refused)
        raise APIError(
            f"refused: a schedule fires with the server's authority; only a user without a "
            f"scope may switch one on (yours is {user.scope!r})",
            status=403,
        )
    if user.scope:
        hosts = await target_hosts(services, row)
        what: dict[str, object] = {"kind": f"schedule.{action}", "schedule": name}
        await enforce_scope(services, user, hosts, source, what)
    store = services.store
    note = AuditNote(user.name, f"schedule.{action}", source, {"schedule": name})
    updated = await store.call(store.update_schedule, name, note, enabled=enabled, next_fire=None)
    if updated is None:
        raise APIError(f"no schedule {name!r}", status=404)
    return updated
