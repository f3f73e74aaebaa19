"""Approval rules: host patterns whose submissions wait for a second user's approval.

Admins add, pause, resume and remove rules (each change audited in its transaction). Any
submission whose hosts one active rule selects — an ad hoc run, a playbook, a template launch, a
schedule's fire — waits as a job `awaiting approval` (see service.approvals). The server setting
`approval_hosts` is one more rule, shown read-only: it is changed where the server is configured.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from easytask.errors import APIError, EasyTaskError, NoHostsMatched, PatternError
from easytask.service.context import Services
from easytask.store.audit import AuditNote
from easytask.store.models import ApprovalRule, Job, JobApproval, User, utcnow

MAX_NOTE = 500
MAX_PATTERN = 1000
SERVER_RULE = "server"  # the id the `approval_hosts` setting is shown with
MAX_RULE_ID = 2**31 - 1  # the id column is a 32-bit integer on PostgreSQL
# Who a schedule's fire runs as (the server's own authority); a held fire starts as it too.
SCHEDULE_USER = User(name="schedule", role="admin", scope="")


def rule_dict(row: ApprovalRule) -> dict[str, Any]:
    """A rule as the API returns it."""
    return {
        "id": row.id,
        "pattern": row.pattern,
        "note": row.note,
        "paused": row.paused,
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "updated_by": row.updated_by,
        "updated_at": row.updated_at.isoformat(),
        "read_only": False,
    }


def server_rule(services: Services) -> dict[str, Any] | None:
    """The server's `approval_hosts` setting as a read-only rule (None when unset)."""
    pattern = services.settings.approval_hosts
    if not pattern:
        return None
    return {
        "id": SERVER_RULE,
        "pattern": pattern,
        "note": "the server setting approval_hosts (changed where the server is configured)",
        "paused": False,
        "created_by": "server",
        "created_at": None,
        "updated_by": "",
        "updated_at": None,
        "read_only": True,
    }


async def list_rules(services: Services) -> list[dict[str, Any]]:
    """Every rule: the server's setting first (read-only), then the stored ones, oldest first."""
    store = services.store
    rows = [rule_dict(r) for r in await store.call(store.list_approval_rules)]
    fixed = server_rule(services)
    return [fixed, *rows] if fixed else rows


async def check_pattern(services: Services, pattern: Any) -> str:
    """A rule's host pattern, parsed as a submission's would be: 400 naming the wrong part. A
    pattern that selects no host yet is kept (the hosts may come later)."""
    if not isinstance(pattern, str) or not pattern.strip():
        raise APIError("pattern is required: a host pattern (e.g. prod or web:&prod)")
    pattern = pattern.strip()
    if len(pattern) > MAX_PATTERN:
        raise APIError(f"pattern: at most {MAX_PATTERN} characters")
    inventory = await services.merged_inventory()
    try:
        inventory.select(pattern)
    except NoHostsMatched as exc:
        if "out of range" in str(exc):
            raise APIError(f"pattern: {exc}") from exc
    except PatternError as exc:
        raise APIError(f"pattern: {exc}") from exc
    except EasyTaskError as exc:
        raise APIError(f"pattern: {exc}") from exc
    return pattern


def _note(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_NOTE or "\x00" in value:
        raise APIError(f"note must be text (at most {MAX_NOTE} characters)")
    return value.strip()


def _rule_id(value: Any) -> int:
    if value == SERVER_RULE:
        raise APIError(
            "rule server is the server setting approval_hosts: change it where the server is "
            "configured (flag, EASYTASK_APPROVAL_HOSTS or the settings file)",
            status=409,
        )
    try:
        number = int(value)
    except (TypeError, ValueError) as exc:
        raise APIError(f"no approval rule {value!r}", status=404) from exc
    if not 0 < number <= MAX_RULE_ID:  # no rule has it (and the database could not look it up)
        raise APIError(f"no approval rule {value}", status=404)
    return number


async def add_rule(services: Services, user: User, source: str, data: Any) -> ApprovalRule:
    """Store a new rule (400 naming what is wrong, nothing stored), audited with it."""
    if not isinstance(data, Mapping):
        raise APIError("the body must be an object: {pattern, note}")
    unknown = sorted(set(data) - {"pattern", "note", "paused"})
    if unknown:
        raise APIError(f"{unknown[0]}: no such field (pattern, note, paused)")
    pattern = await check_pattern(services, data.get("pattern"))
    note = _note(data.get("note"))
    paused = data.get("paused", False)
    if not isinstance(paused, bool):
        raise APIError("paused must be true or false")
    row = ApprovalRule(
        pattern=pattern, note=note, paused=paused, created_by=user.name, updated_by=user.name
    )
    detail = {"pattern": pattern, "note": note, "paused": paused}
    store = services.store
    return await store.call(
        store.create_approval_rule,
        row,
        AuditNote(user.name, "approval-rule.create", source, detail),
    )


async def pause_rule(
    services: Services, user: User, source: str, rule_id: Any, data: Any
) -> ApprovalRule:
    """Pause (`{"paused": true}`) or resume a rule (404 if none), audited with the change."""
    number = _rule_id(rule_id)
    if not isinstance(data, Mapping) or not isinstance(data.get("paused"), bool):
        raise APIError("paused is required: true or false")
    unknown = sorted(set(data) - {"paused"})
    if unknown:
        raise APIError(f"{unknown[0]}: only paused may change (remove the rule and add another)")
    paused = bool(data["paused"])
    action = "approval-rule.pause" if paused else "approval-rule.resume"
    store = services.store
    row = await store.call(
        store.pause_approval_rule,
        number,
        paused,
        user.name,
        AuditNote(user.name, action, source, {"rule": number}),
    )
    if row is None:
        raise APIError(f"no approval rule {number}", status=404)
    return row


async def remove_rule(services: Services, user: User, source: str, rule_id: Any) -> ApprovalRule:
    """Delete a rule (404 if none; 409 for the server's setting), audited with the change."""
    number = _rule_id(rule_id)
    store = services.store
    rows = {r.id: r for r in await store.call(store.list_approval_rules)}
    known = rows.get(number)
    detail: dict[str, Any] = {"rule": number}
    if known is not None:
        detail["pattern"] = known.pattern
    row = await store.call(
        store.delete_approval_rule,
        number,
        AuditNote(user.name, "approval-rule.delete", source, detail),
    )
    if row is None:
        raise APIError(f"no approval rule {number}", status=404)
    return row


async def matching_rules(services: Services, hosts: Sequence[str]) -> list[str]:
    """The patterns of the active rules (the server's setting first) that select one of these
    hosts; empty when the submission need not wait."""
    store = services.store
    patterns = [r.pattern for r in await store.call(store.list_approval_rules) if not r.paused]
    if services.settings.approval_hosts:
        patterns.insert(0, services.settings.approval_hosts)
    if not patterns or not hosts:
        return []
    inventory = await services.merged_inventory()
    wanted = set(hosts)
    matched = []
    for pattern in dict.fromkeys(patterns):
        try:
            guarded = inventory.select(pattern)
        except EasyTaskError:
            continue
        if wanted.intersection(guarded):
            matched.append(pattern)
    return matched


def held_by_schedule(requested_by: str, source: str) -> bool:
    """Whether a held submission came from a schedule's fire (it starts as the schedule)."""
    return requested_by == SCHEDULE_USER.name and source.startswith("schedule ")


async def hold(
    services: Services,
    user: User,
    source: str,
    rules: list[str],
    request: dict[str, Any],
    job: Job,
) -> Job:
    """Store a submission the `rules` hold as a job awaiting approval (no runs), with what it
    would run (`request`: no secret value) and its audit event, in one transaction; the
    server's webhook is told. An admin (not the requester) approves it (service.approvals)."""
    expires = utcnow() + timedelta(seconds=services.settings.approval_expiry)
    asked = {**request, "rules": rules}
    approval = JobApproval(
        job_id=0,
        template="",
        request=json.dumps(asked, sort_keys=True),
        requested_by=user.name,
        expires_at=expires,
    )
    job.submitted_by, job.source = user.name, source
    job.pending_timeout = services.pending_timeout
    detail = {**asked, "expires_at": expires.isoformat()}
    store = services.store
    job, approval = await store.call(
        store.create_approval,
        job,
        approval,
        AuditNote(user.name, "approval.request", source, detail),
    )
    if services.approval_hook is not None:
        await services.approval_hook("approval.requested", job, approval)
    return job


def cannot_wait(rules: list[str], why: str) -> APIError:
    """A held submission that cannot be stored to wait (409, nothing stored)."""
    return APIError(
        f"this submission needs approval (approval rule {rules[0]!r}) and {why}, so it cannot "
        "wait for one",
        status=409,
    )
