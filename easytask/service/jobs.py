"""Job use cases: submit an ad hoc job or a playbook, run a schedule now, kill a run or a job."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from easytask.errors import APIError, PlaybookError
from easytask.masking import Masker
from easytask.plan import PlaybookPlan, connection_warnings
from easytask.plan.become import agentless_refusal, resolve_become
from easytask.scheduler.egress import WebhookRefused, url_origin
from easytask.scheduler.inflight import JobOptions
from easytask.scheduler.playstart import submit_playbook
from easytask.service import approvalrules
from easytask.service.context import Services
from easytask.service.credentials import (
    AS_VALUE,
    HostCredentials,
    env_name,
    host_credentials,
    note_use,
    open_credentials,
)
from easytask.service.files import file_digests, upload_id
from easytask.service.planning import plan_file, plan_pattern
from easytask.service.reading import Reader
from easytask.service.scope import enforce_scope
from easytask.store.audit import AuditNote
from easytask.store.models import Job, Run, RunState, Schedule, User
from easytask.vault import vault_values


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
    credentials: Sequence[str] = (),
    template: dict[str, Any] | None = None,
    hold: bool = True,
) -> tuple[Job, list[Run]]:
    """An ad hoc command (or checksum, copy, script, fetch) over a host pattern, audited with
    the job in one transaction; `one` picks the host with the most headroom of those matched; `limit`,
    `extra_vars` and `remote_user` as `plan_adhoc` takes them. `credentials`: stored
    credentials exported to the command (`env_name`). `template`: the job template launched
    (its name, parameters and approval), kept in the audit event and the job's vars. A
    submission whose hosts an approval rule selects waits as a job awaiting approval (no runs;
    `hold=False`: it was decided already, a template launch or an approved request)."""
    planned = await plan_pattern(
        services, pattern, command, limit=limit, extra_vars=extra_vars, user=remote_user
    )
    if one:
        agents = [p for p in planned if p.connection == "agent"] or planned
        chosen = services.registry.least_busy([p.host for p in agents])
        planned = [p for p in agents if p.host == chosen]
    vaulted = vault_values(*(p.vars for p in planned))  # the hosts' vault values: masked too
    if vaulted:
        hide = Masker(vaulted)
        held = [p.host for p in planned if hide(p.command) != p.command]
        if held:  # an ad hoc command is stored as it runs: it may not carry a secret
            raise APIError(
                f"the command on {held[0]} would hold a value from an Ansible Vault, and a "
                "command is stored as it runs; use a playbook task (its stored command is masked)"
            )
    await enforce_scope(
        services,
        user,
        [p.host for p in planned],
        source,
        {"kind": kind, "pattern": pattern, "command": command},
    )
    what = {"kind": kind, "pattern": pattern, "command": command}
    hosts = [p.host for p in planned]
    opened = await open_credentials(
        services, user, source, {n: hosts for n in credentials}, what, kinds=AS_VALUE
    )
    env = {env_name(n): v for n, v in opened.values.items()}
    inline = sorted(options.secret_env)  # given with the request: never stored
    clash = sorted(set(env) & set(options.secret_env))
    if clash:
        raise APIError(f"secret {', '.join(clash)} given twice (a value and a credential)")
    agentless = {p.host: p.vars for p in planned if p.connection != "agent"}
    per_host = await host_credentials(services, user, source, agentless, what)
    options = replace(
        options,
        secret_env={**options.secret_env, **env},
        ssh_keys=per_host.ssh_keys,
        become_passwords=per_host.become_passwords,
    )
    used = sorted({*opened.names, *per_host.names})
    if vaulted:
        options = replace(options, masks=(*options.masks, *vaulted))
    action = options.file_action
    become: dict[str, list[str]] = {}  # user -> the hosts whose runs become that user
    for p in planned:
        as_user = resolve_become(p.host, p.vars, options.become)
        has_password = p.host in per_host.become_passwords
        refusal = (
            agentless_refusal(p.host, as_user, p.connection, has_password)
            if p.connection != "agent"
            else None
        )
        if refusal:
            raise APIError(refusal)
        if as_user is not None:
            become.setdefault(as_user.user, []).append(p.host)
    rules = await approvalrules.matching_rules(services, hosts) if hold else []
    if rules:
        if kind != "command" or action is not None:
            raise approvalrules.cannot_wait(rules, f"a {kind} job's files are not kept")
        if inline:
            raise approvalrules.cannot_wait(
                rules, "its secret values are not stored (use stored credentials)"
            )
        request: dict[str, Any] = {
            "kind": "adhoc",
            "pattern": pattern,
            "command": command,
            "name": name[:200],
            "limit": limit or "",
            "hosts": hosts,
            "one": one,
            "timeout": options.timeout,
            "pending_timeout": options.pending_timeout,
            "forks": options.forks,
            "credentials": list(credentials),
        }
        if extra_vars is not None:
            request["extra_vars"] = extra_vars
        if remote_user:
            request["user"] = remote_user
        if options.become.as_dict():
            request["become"] = options.become.as_dict()
        waiting = Job(
            kind="adhoc", name=name[:200], pattern=pattern, command=command, timeout=options.timeout
        )
        return await approvalrules.hold(services, user, source, rules, request, waiting), []
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
    if become:
        detail["become"] = become
    local = [p.host for p in planned if p.connection == "local"]
    if local:  # these run on the server's own host, as its user (allow_local_connection)
        detail["local"] = local
    if options.secret_env:
        detail["secrets"] = sorted(options.secret_env)  # names only, never values
    if used:
        detail["credentials"] = used  # names only, never values
    job_vars: dict[str, Any] = {}
    if template is not None:
        detail["template"] = job_vars["template"] = template
    warnings = connection_warnings(
        {p.host: p.vars for p in planned}, {p.host: p.connection for p in planned}
    )
    if warnings:  # shown with the job (CLI and console), once per host and variable
        job_vars["warnings"] = warnings
    if action is not None and action.kind in ("copy", "script"):
        detail["files"] = await asyncio.to_thread(file_digests, action.src)
        upload = upload_id(services.state_dir, action.src)
        if upload is not None:  # kept while a job refers to it (see Retention)
            job_vars["upload"] = upload
    submitted = await services.engine.submit(
        planned,
        name=name[:200],
        pattern=pattern,
        command=command,
        options=options,
        user=user.name,
        source=source,
        audit=AuditNote(user.name, "job.submit", source, detail),
        job_vars=job_vars,
    )
    await note_use(services, used, user.name)
    return submitted


async def check_webhooks(services: Services, plan: PlaybookPlan, actor: str, source: str) -> None:
    """Refuse (400, audited as `job.refused`) a playbook whose `notify:` names a URL outside the
    server's webhook allowlist; nothing is queued and nothing is called."""
    for notify in plan.playbook.notify:
        try:
            services.webhooks.check(notify.url)
        except WebhookRefused as exc:
            what = {"kind": "notify", "playbook": plan.name, "target": url_origin(notify.url)}
            await services.audit(actor, "job.refused", source, what)
            raise PlaybookError(exc.message, location=plan.playbook.at("notify")) from exc


async def submit_plan(
    services: Services,
    user: User,
    source: str,
    plan: PlaybookPlan,
    extra: dict[str, Any],
    credentials: Sequence[str] = (),
    hold: bool = True,
) -> tuple[Job, list[Run]]:
    """Start a planned playbook, its audit event stored with the job. `credentials`: stored
    credentials the caller already opened into the plan's secret variables (named in the audit
    event, their last use noted). A playbook whose hosts an approval rule selects waits as a job
    awaiting approval (`hold=False`: decided already)."""
    await enforce_scope(
        services,
        user,
        list(plan.all_hosts),
        source,
        {"kind": "playbook", "playbook": plan.name, "pattern": plan.playbook.hosts},
    )
    await check_webhooks(services, plan, user.name, source)
    what = {"kind": "playbook", "playbook": plan.name, "pattern": plan.playbook.hosts}
    per_host = await plan_credentials(services, user, source, plan, what)
    per_host.names = sorted({*per_host.names, *credentials})
    detail = {
        "kind": "playbook",
        "playbook": plan.name,
        **extra,
        "pattern": plan.playbook.hosts,
        "limit": plan.limit,
        **({"tags": list(plan.tags)} if plan.tags else {}),
        **({"skip_tags": list(plan.skip_tags)} if plan.skip_tags else {}),
        "hosts": list(plan.hosts),
        "extra_vars": sorted(set(plan.extra_vars) - set(plan.credentials)),
        "sha256": hashlib.sha256(plan.playbook.text.encode()).hexdigest(),
    }
    if per_host.names:
        detail["credentials"] = per_host.names  # names only, never values
    become = plan_become(plan, per_host.become_passwords)
    if become:
        detail["become"] = become
    rules = await approvalrules.matching_rules(services, list(plan.all_hosts)) if hold else []
    if rules:
        return await hold_plan(services, user, source, plan, extra, rules), []
    local = [h for h in plan.all_hosts if plan.connection(h) == "local"]
    if local:  # these run on the server's own host, as its user (allow_local_connection)
        detail["local"] = local
    submitted = await submit_playbook(
        services.engine,
        plan,
        user=user.name,
        source=source,
        pending_timeout=services.pending_timeout,
        audit=AuditNote(user.name, "job.submit", source, detail),
        ssh_keys=per_host.ssh_keys,
        become_passwords=per_host.become_passwords,
    )
    await note_use(services, per_host.names, user.name)
    return submitted


async def hold_plan(
    services: Services,
    user: User,
    source: str,
    plan: PlaybookPlan,
    extra: dict[str, Any],
    rules: list[str],
    kind: str = "playbook",
) -> Job:
    """A playbook the approval `rules` hold: stored to wait (what to plan again on approval, no
    secret value: a secret given with the request cannot wait, 409)."""
    given = sorted((set(plan.playbook.secrets) & set(plan.extra_vars)) - set(plan.credentials))
    if given:
        raise approvalrules.cannot_wait(
            rules, f"its secret {given[0]!r} is not stored (use a stored credential)"
        )
    request: dict[str, Any] = {
        "kind": kind,
        "playbook": str(Path(plan.playbook.path).resolve()),
        "sha256": hashlib.sha256(plan.playbook.text.encode()).hexdigest(),
        "name": plan.name,
        "pattern": plan.playbook.hosts,
        "limit": plan.limit or "",
        "hosts": list(plan.all_hosts),
        "extra_vars": {k: v for k, v in plan.extra_vars.items() if k not in plan.credentials},
        "tags": list(plan.tags),
        "skip_tags": list(plan.skip_tags),
        "extra": extra,
    }
    if plan.become.as_dict():
        request["become"] = plan.become.as_dict()
    waiting = Job(
        kind=kind,
        name=plan.name,
        pattern=plan.playbook.hosts,
        command=Path(plan.playbook.path).name,
        vars=json.dumps({"playbook": request["playbook"]}),  # keeps a submitted bundle
    )
    return await approvalrules.hold(services, user, source, rules, request, waiting)


async def plan_credentials(
    services: Services, user: User | None, source: str, plan: PlaybookPlan, what: dict[str, Any]
) -> HostCredentials:
    """Check who may use the credentials a playbook plan takes (its `secrets:` from the store,
    on every host of the job; the inventory's for its agentless hosts) and open the latter;
    `names` lists them all."""
    hosts = list(plan.all_hosts)
    await open_credentials(
        services, user, source, {n: hosts for n in plan.credentials}, what, kinds=AS_VALUE
    )
    agentless = {h: plan.host_vars.get(h, {}) for h in hosts if plan.connection(h) != "agent"}
    per_host = await host_credentials(services, user, source, agentless, what)
    per_host.names = sorted({*plan.credentials, *per_host.names})
    return per_host


def plan_become(
    plan: PlaybookPlan, passwords: Mapping[str, str] | None = None
) -> dict[str, dict[str, list[str]]]:
    """Task -> user -> the hosts whose runs of the task become that user (for the audit).
    With `passwords` (host -> become password), a run that cannot become its user without one
    (`su` on an agentless host) is refused here (`APIError`), before anything is stored."""
    out: dict[str, dict[str, list[str]]] = {}
    for task in plan.tasks:
        request = plan.become_request(task)
        for host in task.hosts:
            as_user = resolve_become(host, plan.host_vars.get(host, {}), request)
            connection = plan.connection(host)
            if passwords is not None and connection == "ssh":
                refusal = agentless_refusal(host, as_user, connection, host in passwords)
                if refusal:
                    raise APIError(f"task {task.name!r}: {refusal}")
            if as_user is not None:
                out.setdefault(task.name, {}).setdefault(as_user.user, []).append(host)
    return out


async def submit_scheduled(
    services: Services, path: Path, name: str, hold: bool = True, sha256: str = ""
) -> int:
    """Start the playbook of a schedule (as the user `schedule`); the job's id (one awaiting
    approval when an approval rule selects its hosts, unless `hold=False`). With `sha256` (an
    approved request's), a playbook whose text no longer has that hash is refused (409)."""
    plan = await plan_file(services, path)
    if sha256 and hashlib.sha256(plan.playbook.text.encode()).hexdigest() != sha256:
        raise APIError(f"the playbook {path.name} changed since the request", status=409)
    source = f"schedule {name}"
    await check_webhooks(services, plan, "schedule", source)
    what = {"kind": "schedule", "playbook": plan.name}
    per_host = await plan_credentials(services, None, source, plan, what)
    rules = await approvalrules.matching_rules(services, list(plan.all_hosts)) if hold else []
    if rules:
        extra = {"schedule": name, "file": path.name}
        user = approvalrules.SCHEDULE_USER
        waiting = await hold_plan(services, user, source, plan, extra, rules, kind="schedule")
        assert waiting.id is not None
        return waiting.id
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
            {
                "kind": "schedule",
                "playbook": plan.name,
                "hosts": list(plan.hosts),
                **({"credentials": per_host.names} if per_host.names else {}),
                **({"become": plan_become(plan)} if plan_become(plan) else {}),
            },
        ),
        ssh_keys=per_host.ssh_keys,
        become_passwords=per_host.become_passwords,
    )
    await note_use(services, per_host.names, "schedule")
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
    """Terminate every run of a job still in flight; how many runs were asked to end. A job
    the user may not read is not found (404, the attempt audited)."""
    store = services.store
    if await store.call(store.get_job, job_id) is None:
        raise APIError(f"no job {job_id}", status=404)
    if user.scope:  # every host of the job in the scope, or nothing is killed
        hosts = [r.host for r in await store.call(store.job_runs, job_id)]
        reader = await Reader.of(services, user)
        try:
            await enforce_scope(services, user, hosts, source, {"kind": "job.kill", "job": job_id})
        except APIError as exc:
            if not any(reader.sees(host) for host in hosts):  # a job the user cannot read
                raise APIError(f"no job {job_id}", status=404) from exc
            raise
    count = services.engine.kill_job(job_id, user.name)
    if services.cluster is not None:  # the other servers were asked too: count them all
        runs = await store.call(store.job_runs, job_id)
        count = max(count, sum(r.state not in RunState.FINAL for r in runs))
    await services.audit(user.name, "job.kill", source, {"job": job_id, "runs_asked": count})
    return count


async def kill_run(services: Services, user: User, source: str, run_id: int) -> bool:
    """Terminate one run; whether it was asked to end. A run on a host outside the user's
    scope is not found (404, the attempt audited)."""
    store = services.store
    run = await store.call(store.get_run, run_id)
    if run is None:
        raise APIError(f"no run {run_id}", status=404)
    what = {"kind": "run.kill", "run": run_id, "job": run.job_id}
    try:
        await enforce_scope(services, user, [run.host], source, what)
    except APIError as exc:
        if (await Reader.of(services, user)).sees(run.host):
            raise
        raise APIError(f"no run {run_id}", status=404) from exc
    if run.state in RunState.FINAL:
        raise APIError(f"run {run_id} already ended ({run.state})", status=409)
    killed = services.engine.kill_run(run_id, user.name) or (
        services.cluster is not None  # asked of the server that executes it
    )
    await services.audit(
        user.name, "run.kill", source, {"run": run_id, "job": run.job_id, "host": run.host}
    )
    return killed
