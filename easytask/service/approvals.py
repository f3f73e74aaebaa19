"""A template launch and the two-person rule: a launch that needs approval waits as a job
`awaiting approval` (no runs) until a user with the approver right (not the requester) approves
it (it starts as the requester's job) or rejects it, or it expires; each step audited and told to
the server's webhook.

A launch needs approval when its template says `approval: required`, or when one of its hosts is
selected by an approval rule (service.approvalrules: the admins' rules and the server's
`approval_hosts`). Any other submission an approval rule holds (an ad hoc run, a playbook, a
schedule's fire) waits the same way; an admin (not the requester) approves it and it starts as
its requester's (a schedule's fire: as the schedule).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from easytask.errors import APIError, EasyTaskError
from easytask.jobtemplate import TemplateDefinition, check_values, may_approve, may_launch
from easytask.plan.become import BecomeRequest
from easytask.scheduler.events import job_state as job_state_event
from easytask.scheduler.inflight import JobOptions
from easytask.service import approvalrules, jobs
from easytask.service.approvalrules import SCHEDULE_USER, held_by_schedule
from easytask.service.context import Services
from easytask.service.planning import plan_file
from easytask.service.scope import enforce_scope
from easytask.service.templates import definition_of, get_template, start, template_hosts
from easytask.store.audit import AuditNote
from easytask.store.models import Job, JobApproval, Run, RunState, User, utcnow

MAX_COMMENT = 2000
# Called with (event, job, approval) when an approval is requested or decided (the server sends
# it to its webhook, see easytask.scheduler.notify); None: nobody is told.
ApprovalHook = Callable[[str, Job, JobApproval], Awaitable[None]]


def approval_dict(row: JobApproval) -> dict[str, Any]:
    """An approval request as the API returns it."""
    request = json.loads(row.request)
    out = {
        "job": row.job_id,
        "kind": request.get("kind") or "template",
        "template": row.template,
        "params": request.get("params", {}),
        "limit": request.get("limit") or "",
        "rules": request.get("rules") or [],
        "requested_by": row.requested_by,
        "state": row.state,
        "created_at": row.created_at.isoformat(),
        "expires_at": row.expires_at.isoformat(),
        "decided_by": row.decided_by,
        "decided_at": row.decided_at.isoformat() if row.decided_at else None,
        "comment": row.comment,
        "launched_job": row.launched_job,
    }
    # what a held submission would run (never a secret value); empty for a template launch
    extra = request.get("extra") if isinstance(request.get("extra"), dict) else {}
    out.update(
        {
            "pattern": request.get("pattern") or "",
            "command": request.get("command") or "",
            "playbook": Path(request["playbook"]).name if request.get("playbook") else "",
            "hosts": request.get("hosts") or [],
            "credentials": request.get("credentials") or [],
            "schedule": extra.get("schedule") or "",
        }
    )
    return out


@dataclass
class Launch:
    """What a launch started: a job with its runs, or a job awaiting approval (no runs)."""

    job: Job
    runs: list[Run]
    approval: JobApproval | None = None


def launch_values(
    definition: TemplateDefinition, params: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    """The checked values of a launch and the problems, parameter -> message."""
    if not isinstance(params, Mapping):
        return {}, {"params": "must be an object of parameter values"}
    return check_values(definition.params, params)


async def launch(
    services: Services,
    user: User,
    source: str,
    name: str,
    params: Any,
    limit: Any = None,
    hook: ApprovalHook | None = None,
) -> Launch:
    """Launch a template: 403 (audited) for a user it does not allow or hosts outside their
    scope, 400 naming the first parameter that is wrong; then either start it or, when it
    needs approval, store a job awaiting approval."""
    row = await get_template(services, name)
    definition = definition_of(row)
    if not may_launch(definition, user.role, user.name):
        refused = {"kind": "template", "template": name, "role": user.role}
        await services.audit(user.name, "job.refused", source, refused)
        raise APIError(f"refused: {user.name} may not launch template {name!r}", status=403)
    values, problems = launch_values(definition, params)
    if problems:
        field, message = next(iter(problems.items()))
        raise APIError(f"parameter {field}: {message}")
    if limit is not None and not isinstance(limit, str):
        raise APIError("limit must be a host pattern")
    limit = (limit or "").strip() or definition.limit or None
    hosts = await template_hosts(services, definition)
    what: dict[str, object] = {"kind": "template", "template": name, "pattern": definition.pattern}
    await enforce_scope(services, user, hosts, source, what)
    rules = await approvalrules.matching_rules(services, hosts)
    if definition.approval or rules:
        return await request_approval(
            services, user, source, definition, values, limit, hook, rules
        )
    job, runs = await start(services, user, source, definition, values, limit)
    return Launch(job, runs)


# -- approvals ------------------------------------------------------------------------------


async def request_approval(
    services: Services,
    user: User,
    source: str,
    definition: TemplateDefinition,
    values: dict[str, Any],
    limit: str | None,
    hook: ApprovalHook | None,
    rules: list[str] | None = None,
) -> Launch:
    """Store a job awaiting approval (no runs) with its request, audited together."""
    expires = utcnow() + timedelta(seconds=services.settings.approval_expiry)
    request: dict[str, Any] = {"params": values, "limit": limit or ""}
    if rules:
        request["rules"] = rules
    job = Job(
        kind="template",
        name=definition.name,
        pattern=definition.pattern if definition.kind != "playbook" else definition.body,
        command=definition.body if definition.kind != "script" else f"script {definition.name}",
        submitted_by=user.name,
        source=source,
        vars=json.dumps({"template": {"name": definition.name, "params": values}}),
        timeout=definition.timeout,
        pending_timeout=services.pending_timeout,
    )
    approval = JobApproval(
        job_id=0,
        template=definition.name,
        request=json.dumps(request, sort_keys=True),
        requested_by=user.name,
        expires_at=expires,
    )
    detail = {"template": definition.name, **request, "expires_at": expires.isoformat()}
    store = services.store
    job, approval = await store.call(
        store.create_approval,
        job,
        approval,
        AuditNote(user.name, "approval.request", source, detail),
    )
    if hook is not None:
        await hook("approval.requested", job, approval)
    return Launch(job, [], approval)


def _tell_viewers(services: Services, job_id: int, state: str) -> None:
    """A decided job's new state, to those following it (its page, `--follow`)."""
    services.engine.recorder.publish(
        job_state_event(job_id, state), (f"job:{job_id}", f"jobstate:{job_id}")
    )


async def _waiting(services: Services, job_id: int) -> tuple[JobApproval, Job]:
    store = services.store
    approval = await store.call(store.get_approval, job_id)
    job = await store.call(store.get_job, job_id)
    if approval is None or job is None:
        raise APIError(f"job {job_id} does not wait for approval", status=404)
    if approval.state != RunState.AWAITING_APPROVAL:
        by = f" by {approval.decided_by}" if approval.decided_by else ""
        raise APIError(
            f"job {job_id} is no longer awaiting approval ({approval.state}{by})", status=409
        )
    return approval, job


def held_by_rule(approval: JobApproval) -> bool:
    """Whether an approval rule holds this request (any held submission; a template launch
    that reached a rule's hosts): an admin's to decide, whatever the template's approvers."""
    if not approval.template:
        return True
    try:
        return bool(json.loads(approval.request).get("rules"))
    except (ValueError, AttributeError):
        return False


def may_decide(user: User, approval: JobApproval, definition: TemplateDefinition | None) -> bool:
    """Whether `user` may approve or reject this waiting request (as `_check_approver`)."""
    if approval.state != RunState.AWAITING_APPROVAL or user.name == approval.requested_by:
        return False
    if user.scope:
        return False
    if user.role == "admin":
        return True
    return not held_by_rule(approval) and (
        definition is not None and may_approve(definition, user.role, user.name)
    )


async def _check_approver(
    services: Services, user: User, source: str, approval: JobApproval, action: str
) -> TemplateDefinition | None:
    """Refuse (403, audited) the requester, and a user without the approver right."""
    row = await services.store.call(services.store.get_template, approval.template)
    definition = definition_of(row) if row is not None else None
    reason = ""
    if user.name == approval.requested_by:
        reason = "the requester may not approve or reject their own launch"
    elif user.name and user.name == await _schedule_creator(services, approval):
        reason = "a schedule's creator may not approve or reject its fires"
    elif held_by_rule(approval) and (user.scope or user.role != "admin"):
        reason = (
            f"{user.name} may not decide: only an admin decides a submission an approval rule holds"
        )
    elif user.scope or not (
        user.role == "admin"
        or (definition is not None and may_approve(definition, user.role, user.name))
    ):
        reason = f"{user.name} does not hold the approver right for template {approval.template!r}"
    if reason:
        what = {"job": approval.job_id, "template": approval.template, "reason": reason}
        await services.audit(user.name, f"{action}.refused", source, what)
        raise APIError(f"refused: {reason}", status=403)
    return definition


async def _schedule_creator(services: Services, approval: JobApproval) -> str:
    """Who made the stored schedule whose fire this is ("" for anything else): they stand in
    for the requester, so the two-person rule holds for what a schedule starts."""
    if approval.requested_by != SCHEDULE_USER.name:
        return ""
    store = services.store
    job = await store.call(store.get_job, approval.job_id)
    if job is None or not held_by_schedule(job.submitted_by, job.source):
        return ""
    name = job.source.removeprefix("schedule ")
    rows = await store.call(store.list_schedules)
    return next((row.created_by for row in rows if row.name == name), "")


def _comment(comment: Any, required: bool) -> str:
    if comment is None:
        comment = ""
    if not isinstance(comment, str) or len(comment) > MAX_COMMENT or "\x00" in comment:
        raise APIError(f"comment must be text (at most {MAX_COMMENT} characters)")
    comment = comment.strip()
    if required and not comment:
        raise APIError("comment is required: say why")
    return comment


async def approve(
    services: Services,
    user: User,
    source: str,
    job_id: int,
    comment: Any,
    hook: ApprovalHook | None = None,
) -> JobApproval:
    """Approve a waiting launch and start it as its requester; the job that ran is named in
    the approval's `launched_job`. One decision wins (409 for the other)."""
    comment = _comment(comment, required=False)
    approval, job = await _waiting(services, job_id)
    if not approval.template:
        return await _approve_held(services, user, source, approval, job, comment, hook)
    definition = await _check_approver(services, user, source, approval, "approval.approve")
    if definition is None:
        raise APIError(f"template {approval.template!r} no longer exists", status=409)
    store = services.store
    requester = await _requester(services, approval, job)
    if not may_launch(definition, requester.role, requester.name):  # changed since the request
        raise APIError(
            f"{requester.name} may no longer launch template {approval.template!r}", status=409
        )
    what: dict[str, object] = {"kind": "template", "template": approval.template, "job": job_id}
    await enforce_scope(
        services, requester, await template_hosts(services, definition), source, what
    )
    request = json.loads(approval.request)
    note = AuditNote(
        user.name,
        "approval.approve",
        source,
        {"job": job_id, "template": approval.template, "comment": comment},
    )
    decided = await _decide(services, job, RunState.APPROVED, user, comment, note, hook)
    try:
        launched, _ = await start(
            services,
            requester,
            f"approval of job {job_id}",
            definition,
            request.get("params", {}),
            request.get("limit") or None,
            approved_by=user.name,
        )
    except EasyTaskError as exc:
        what = {"job": job_id, "template": approval.template, "error": str(exc)}
        note = AuditNote(user.name, "approval.launch_failed", source, what)
        await store.call(store.approved_launch_failed, job_id, note)
        _tell_viewers(services, job_id, RunState.FAILED)
        raise APIError(f"approved, but the launch failed: {exc}", status=409) from exc
    assert launched.id is not None
    await store.call(store.set_launched, job_id, launched.id)
    decided.launched_job = launched.id
    return decided


async def _requester(services: Services, approval: JobApproval, job: Job) -> User:
    """Who a waiting submission starts as: its requester (409 if no longer a user), or the
    schedule whose fire it was."""
    if held_by_schedule(approval.requested_by, job.source):
        return SCHEDULE_USER
    store = services.store
    requester = await store.call(store.get_user, approval.requested_by)
    if requester is None or requester.disabled:
        raise APIError(f"the requester {approval.requested_by!r} is no longer a user", status=409)
    return requester


async def _approve_held(
    services: Services,
    user: User,
    source: str,
    approval: JobApproval,
    job: Job,
    comment: str,
    hook: ApprovalHook | None,
) -> JobApproval:
    """Approve a submission an approval rule held (admins only) and start it as its requester."""
    job_id = approval.job_id
    await _check_approver(services, user, source, approval, "approval.approve")
    requester = await _requester(services, approval, job)
    request = json.loads(approval.request)
    note = AuditNote(
        user.name,
        "approval.approve",
        source,
        {
            "job": job_id,
            "kind": request.get("kind"),
            "rules": request.get("rules") or [],
            "comment": comment,
        },
    )
    store = services.store
    decided = await _decide(services, job, RunState.APPROVED, user, comment, note, hook)
    try:
        launched = await start_held(services, requester, f"approval of job {job_id}", request)
    except (EasyTaskError, KeyError, TypeError, ValueError) as exc:
        # a request that cannot be started (one edited in the database included) fails the
        # approved job with its reason instead of leaving it approved with nothing started
        what = {"job": job_id, "kind": request.get("kind"), "error": str(exc)}
        note = AuditNote(user.name, "approval.launch_failed", source, what)
        await store.call(store.approved_launch_failed, job_id, note)
        _tell_viewers(services, job_id, RunState.FAILED)
        raise APIError(f"approved, but the launch failed: {exc}", status=409) from exc
    assert launched.id is not None
    await store.call(store.set_launched, job_id, launched.id)
    decided.launched_job = launched.id
    return decided


async def start_held(
    services: Services, requester: User, source: str, request: Mapping[str, Any]
) -> Job:
    """Start what a held submission asked for, planned again now (its requester's scope and
    credential rules apply again); a playbook changed since the request is refused (409)."""
    kind = request.get("kind")
    limit = request.get("limit") or None
    become = BecomeRequest.from_dict(request.get("become"))
    if kind == "adhoc":
        options = JobOptions(
            timeout=request.get("timeout"),
            pending_timeout=float(request.get("pending_timeout") or services.pending_timeout),
            forks=int(request.get("forks") or 0),
            become=become,
        )
        job, _ = await jobs.submit_adhoc(
            services,
            requester,
            source,
            pattern=str(request["pattern"]),
            command=str(request["command"]),
            kind="command",
            name=str(request.get("name") or request["command"]),
            options=options,
            one=bool(request.get("one")),
            limit=limit,
            extra_vars=request.get("extra_vars"),
            remote_user=request.get("user") or None,
            credentials=list(request.get("credentials") or []),
            hold=False,
        )
        return job
    if kind not in ("playbook", "schedule"):
        raise APIError(f"cannot start a held submission of kind {kind!r}", status=409)
    path = Path(str(request["playbook"]))
    if kind == "schedule":
        schedule = str((request.get("extra") or {}).get("schedule") or "")
        job_id = await jobs.submit_scheduled(
            services, path, schedule, hold=False, sha256=str(request.get("sha256") or "-")
        )
        started = await services.store.call(services.store.get_job, job_id)
        assert started is not None
        return started
    plan = await plan_file(
        services,
        path,
        dict(request.get("extra_vars") or {}),
        limit,
        tuple(request.get("tags") or ()),
        tuple(request.get("skip_tags") or ()),
        become,
    )
    if hashlib.sha256(plan.playbook.text.encode()).hexdigest() != request.get("sha256"):
        raise APIError(f"the playbook {path.name} changed since the request", status=409)
    job, _ = await jobs.submit_plan(
        services, requester, source, plan, dict(request.get("extra") or {}), hold=False
    )
    return job


async def reject(
    services: Services,
    user: User,
    source: str,
    job_id: int,
    comment: Any,
    hook: ApprovalHook | None = None,
) -> JobApproval:
    """Reject a waiting launch with a comment (required); nothing runs."""
    comment = _comment(comment, required=True)
    approval, job = await _waiting(services, job_id)
    await _check_approver(services, user, source, approval, "approval.reject")
    note = AuditNote(
        user.name,
        "approval.reject",
        source,
        {"job": job_id, "template": approval.template, "comment": comment},
    )
    return await _decide(services, job, RunState.REJECTED, user, comment, note, hook)


async def _decide(
    services: Services,
    job: Job,
    state: str,
    user: User,
    comment: str,
    note: AuditNote,
    hook: ApprovalHook | None,
) -> JobApproval:
    """Record an approver's decision (with its audit event, in one transaction; 409 when the
    job no longer waits), tell the job's viewers and the webhook."""
    store = services.store
    job_id = job.id or 0
    decided = await store.call(store.decide_approval, job_id, state, user.name, comment, note)
    if decided is None:
        raise APIError(f"job {job_id} is no longer awaiting approval", status=409)
    _tell_viewers(services, job_id, state)
    if hook is not None:
        event = "approval.approved" if state == RunState.APPROVED else "approval.rejected"
        await hook(event, job, decided)
    return decided


async def expire_approvals(services: Services, hook: ApprovalHook | None = None) -> int:
    """End every waiting launch whose time is up as `expired` (audited); how many."""
    store = services.store
    count = 0
    for approval in await store.call(store.expired_approvals, utcnow()):
        note = AuditNote(
            "server",
            "approval.expire",
            "server",
            {"job": approval.job_id, "template": approval.template},
        )
        decided = await store.call(
            store.decide_approval, approval.job_id, RunState.EXPIRED, "", "expired", note
        )
        if decided is None:
            continue
        count += 1
        _tell_viewers(services, approval.job_id, RunState.EXPIRED)
        job = await store.call(store.get_job, approval.job_id)
        if hook is not None and job is not None:
            await hook("approval.expired", job, decided)
    return count
