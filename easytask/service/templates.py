"""Job templates: save and delete a template (admins), start a launch's job.

Admins manage templates. Who may launch one is set per template (roles, users; admins always),
and the launcher's scope must cover every host of the template's pattern. A template's
parameters reach a command only as `{{ params.NAME | quote }}` (see easytask.jobtemplate), a
playbook as the extra variable `params`. A credential parameter names a stored credential: the
command gets its value as an environment variable (`env_name`), the variable `params.NAME`
holds that variable's name, never the value. A script template gets its values as `PARAM_NAME`
environment variables and in its `args`, quoted. Launching, and approvals: service.approvals.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from easytask.errors import APIError, EasyTaskError, TemplateError
from easytask.jobtemplate import (
    TemplateDefinition,
    TemplateInvalid,
    check_definition,
)
from easytask.scheduler.inflight import JobOptions
from easytask.service import jobs
from easytask.service.context import Services
from easytask.service.credentials import AS_VALUE, env_name, open_credentials
from easytask.service.files import file_action
from easytask.service.planning import plan_bundle, plan_file
from easytask.service.playbooks import playbook_path
from easytask.store.audit import AuditNote
from easytask.store.models import Job, JobTemplate, Run, User
from easytask.templating import render

log = logging.getLogger("easytask.server")


def definition_of(row: JobTemplate) -> TemplateDefinition:
    """A stored template's definition (checked again: it was checked when saved)."""
    return check_definition(json.loads(row.definition))


def template_dict(row: JobTemplate) -> dict[str, Any]:
    """A template as the API returns it: its definition and who made and changed it."""
    return {
        **definition_of(row).as_dict(),
        "created_by": row.created_by,
        "created_at": row.created_at.isoformat(),
        "updated_by": row.updated_by,
        "updated_at": row.updated_at.isoformat(),
    }


def job_template(job: Job) -> dict[str, Any] | None:
    """The template a job was launched from (name, values, who approved), if it was."""
    try:
        about = json.loads(job.vars or "{}").get("template")
    except (ValueError, AttributeError):
        return None
    return about if isinstance(about, dict) else None


def _invalid(exc: TemplateInvalid) -> APIError:
    return APIError(exc.message)


# -- management (admin) ---------------------------------------------------------------------


async def save_template(
    services: Services,
    actor: str,
    source: str,
    data: Mapping[str, Any],
    *,
    create: bool,
    name: str | None = None,
) -> JobTemplate:
    """Create (409 if the name is taken) or replace (404 if there is none; the name stays) a
    template; 400 naming what is wrong, and nothing stored. Audited in the same transaction."""
    try:
        definition = check_definition(data)
    except TemplateInvalid as exc:
        raise _invalid(exc) from exc
    if name is not None and definition.name != name:
        raise APIError(f"name: a template keeps its name ({name!r}); make a new one instead")
    if definition.kind == "playbook":
        try:
            playbook_path(services, definition.body)
        except APIError as exc:
            raise APIError(f"playbook: {exc.message}") from exc
    action = "template.create" if create else "template.update"
    detail = {
        "template": definition.name,
        "kind": definition.kind,
        "pattern": definition.pattern,
        "params": [p.name for p in definition.params],
        "approval": definition.approval,
    }
    store = services.store
    row = await store.call(
        store.put_template,
        definition.name,
        definition.kind,
        json.dumps(definition.as_dict(), sort_keys=True),
        definition.approval,
        actor,
        AuditNote(actor, action, source, detail),
        create=create,
    )
    if row is None and create:
        raise APIError(f"template {definition.name!r} already exists", status=409)
    if row is None:
        raise APIError(f"no template {definition.name!r}", status=404)
    return row


async def delete_template(services: Services, actor: str, source: str, name: str) -> None:
    """Delete a template (404 if there is none), audited in the same transaction."""
    store = services.store
    note = AuditNote(actor, "template.delete", source, {"template": name})
    if await store.call(store.delete_template, name, note) is None:
        raise APIError(f"no template {name!r}", status=404)


async def get_template(services: Services, name: str) -> JobTemplate:
    """The template of this name (404 if there is none)."""
    store = services.store
    row = await store.call(store.get_template, name)
    if row is None:
        raise APIError(f"no template {name!r}", status=404)
    return row


# -- launching ------------------------------------------------------------------------------


async def template_hosts(services: Services, definition: TemplateDefinition) -> list[str]:
    """Every host of a template's pattern (a playbook's `hosts:` when it has none)."""
    if definition.kind == "playbook":
        plan = await plan_file(services, playbook_path(services, definition.body), {"params": {}})
        return list(plan.all_hosts)
    inventory = await services.merged_inventory()
    try:
        return list(inventory.select(definition.pattern))
    except EasyTaskError as exc:
        raise APIError(f"pattern {definition.pattern!r}: {exc}") from exc


async def start(
    services: Services,
    user: User,
    source: str,
    definition: TemplateDefinition,
    values: dict[str, Any],
    limit: str | None,
    approved_by: str = "",
) -> tuple[Job, list[Run]]:
    """Start a template's job now, as `user`, with checked values (whether it needs approval
    was decided by its launch: service.approvals)."""
    about: dict[str, Any] = {"name": definition.name, "params": values}
    if approved_by:
        about["approved_by"] = approved_by
    if definition.kind == "playbook":
        path = playbook_path(services, definition.body)
        plan = await plan_file(services, path, {"params": values}, limit)
        return await jobs.submit_plan(
            services, user, source, plan, {"file": path.name, "template": about}, hold=False
        )
    if definition.kind == "script":
        return await start_script(services, user, source, definition, values, limit, about)
    if definition.retries:
        return await start_with_retries(services, user, source, definition, values, limit, about)
    credentials = [
        values[p.name] for p in definition.params if p.type == "credential" and values[p.name]
    ]
    rendered = {
        p.name: env_name(values[p.name]) if p.type == "credential" and values[p.name] else v
        for p in definition.params
        for v in [values[p.name]]
    }
    options = JobOptions(timeout=definition.timeout, pending_timeout=services.pending_timeout)
    return await jobs.submit_adhoc(
        services,
        user,
        source,
        pattern=definition.pattern,
        command=definition.body,
        kind="command",
        name=definition.name,
        options=options,
        limit=limit,
        extra_vars={"params": rendered},
        credentials=list(dict.fromkeys(credentials)),
        template=about,
        hold=False,
    )


def param_env(definition: TemplateDefinition, values: dict[str, Any]) -> dict[str, str]:
    """A script's values as environment variables `PARAM_NAME` (a credential parameter's is the
    name of the variable that holds the credential)."""
    out = {}
    for p in definition.params:
        value = values[p.name]
        if p.type == "credential":
            value = env_name(value) if value else ""
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out[f"PARAM_{p.name.upper()}"] = str(value)
    return out


async def start_script(
    services: Services,
    user: User,
    source: str,
    definition: TemplateDefinition,
    values: dict[str, Any],
    limit: str | None,
    about: dict[str, Any],
) -> tuple[Job, list[Run]]:
    """A script template: the script sent to each host and run with its arguments (rendered
    with the values quoted) and its values in `PARAM_NAME` environment variables."""
    try:
        context = {"params": values}
        args = await asyncio.to_thread(render, definition.args, context, what="args")
    except TemplateError as exc:
        raise APIError(str(exc)) from exc
    spec: dict[str, Any] = {
        "name": f"{definition.name}.sh",
        "data": base64.b64encode(definition.body.encode()).decode(),
        "args": args,
    }
    if definition.interpreter:
        spec["interpreter"] = definition.interpreter
    action, label = await asyncio.to_thread(
        file_action, services.state_dir, {"kind": "script", "script": spec}
    )
    credentials = [
        values[p.name] for p in definition.params if p.type == "credential" and values[p.name]
    ]
    options = JobOptions(
        timeout=definition.timeout,
        pending_timeout=services.pending_timeout,
        file_action=action,
        env=param_env(definition, values),
    )
    return await jobs.submit_adhoc(
        services,
        user,
        source,
        pattern=definition.pattern,
        command=label,
        kind="script",
        name=definition.name,
        options=options,
        limit=limit,
        credentials=list(dict.fromkeys(credentials)),
        template=about,
        hold=False,
    )


async def start_with_retries(
    services: Services,
    user: User,
    source: str,
    definition: TemplateDefinition,
    values: dict[str, Any],
    limit: str | None,
    about: dict[str, Any],
) -> tuple[Job, list[Run]]:
    """A command template with retries runs as a one-task playbook (the playbook engine retries
    a failed run), its command rendered with the same `params`, quoted as saved.

    A credential parameter's value reaches every attempt the way a playbook's `secrets:` do: the
    task exports it (`env:`, apart from the command line) from a secret variable that is masked
    in the output, left out of the job's stored vars and kept only in the job's 0600 secrets file
    while the job is unfinished, as a playbook's secret variables are."""
    import yaml

    names = list(
        dict.fromkeys(
            values[p.name] for p in definition.params if p.type == "credential" and values[p.name]
        )
    )
    rendered = {
        p.name: env_name(values[p.name]) if p.type == "credential" and values[p.name] else v
        for p in definition.params
        for v in [values[p.name]]
    }
    task: dict[str, Any] = {
        "name": definition.name,
        "shell": definition.body,
        "retries": definition.retries,
        "retry_delay": f"{definition.retry_delay:g}s",
    }
    if definition.timeout:
        task["timeout"] = f"{definition.timeout:g}s"
    secret_vars = {n: f"credential_{env_name(n).lower()}" for n in names}
    if names:
        task["env"] = {env_name(n): "{{ " + secret_vars[n] + " }}" for n in names}
    book: dict[str, Any] = {"name": definition.name, "hosts": definition.pattern}
    if names:
        book["secrets"] = sorted(secret_vars.values())
    book["tasks"] = [task]
    text = yaml.safe_dump(book, sort_keys=False)
    opened: dict[str, str] = {}
    if names:
        hosts = await _launch_hosts(services, definition, limit)
        what = {"kind": "template", "template": definition.name, "pattern": definition.pattern}
        opened = (
            await open_credentials(
                services, user, source, {n: hosts for n in names}, what, kinds=AS_VALUE
            )
        ).values
    secret_values = {secret_vars[n]: opened[n] for n in names}
    plan = await plan_bundle(
        services,
        f"{definition.name}.yml",
        text,
        {},
        limit,
        {"params": rendered, **secret_values},
    )
    return await jobs.submit_plan(
        services, user, source, plan, {"template": about}, credentials=names, hold=False
    )


async def _launch_hosts(
    services: Services, definition: TemplateDefinition, limit: str | None
) -> list[str]:
    """The hosts a command template's launch reaches: its pattern, kept to `limit`."""
    hosts = await template_hosts(services, definition)
    if not limit:
        return hosts
    inventory = await services.merged_inventory()
    try:
        allowed = set(inventory.select(limit))
    except EasyTaskError as exc:
        raise APIError(f"limit {limit!r}: {exc}") from exc
    return [h for h in hosts if h in allowed]
