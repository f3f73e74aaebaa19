"""Planning against the live inventory: ad hoc patterns, submitted bundles, playbooks to resume."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from easytask.errors import EasyTaskError, NoHostsMatched, PlaybookError
from easytask.plan import PlannedRun, PlaybookPlan, plan_adhoc, plan_playbook, plan_runs
from easytask.plan.become import BecomeRequest
from easytask.playbook import Playbook, load_playbook
from easytask.scheduler import secretfile
from easytask.scheduler.playrows import ResumeError, check_resumable
from easytask.scheduler.playstart import resume_playbook
from easytask.service.context import Services
from easytask.service.credentials import AS_VALUE, host_credentials, open_credentials
from easytask.store.models import AgentState, Job


async def plan_pattern(
    services: Services,
    pattern: str,
    command: str,
    *,
    limit: str | None = None,
    extra_vars: dict[str, Any] | None = None,
    user: str | None = None,
) -> list[PlannedRun]:
    """Resolve a pattern against the inventory plus the accepted agents (see `plan_adhoc`)."""
    merged = await services.merged_inventory()
    registry = services.registry
    try:
        if extra_vars is None:
            return plan_adhoc(merged, pattern, command, limit=limit, user=user)
        # rendering a template per host is work for a thread, not for the event loop
        return await asyncio.to_thread(
            plan_adhoc, merged, pattern, command, limit=limit, extra_vars=extra_vars, user=user
        )
    except NoHostsMatched as exc:
        waiting = [
            name
            for name, info in registry.agents.items()
            if info.state != AgentState.ACCEPTED and name in pattern
        ]
        if waiting:
            raise NoHostsMatched(
                f"{exc.message}; agent(s) {', '.join(sorted(waiting))} not accepted "
                f"(pending or revoked): `easytask agents accept NAME`"
            ) from exc
        terms = set(re.split(r"[:,&!]+", pattern))
        unapproved = sorted(
            f"{name} ({label})"
            for name, info in registry.agents.items()
            if info.state == AgentState.ACCEPTED
            for label in info.groups
            if label in terms and label not in info.approved
        )
        if unapproved:
            raise NoHostsMatched(
                f"{exc.message}; agent(s) {', '.join(unapproved)} report the label but it is "
                f"not approved: `easytask agents approve NAME --groups LABEL`"
            ) from exc
        raise


async def plan_file(
    services: Services,
    path: Path,
    extra_vars: dict[str, Any] | None = None,
    limit: str | None = None,
    tags: tuple[str, ...] = (),
    skip_tags: tuple[str, ...] = (),
    become: BecomeRequest | None = None,
) -> PlaybookPlan:
    """Load a playbook file and plan it against the inventory plus the accepted agents;
    `become` as the command line asks (`play -b`)."""
    playbook = await asyncio.to_thread(load_playbook, path, services.vault)
    inventory = await services.merged_inventory()
    given = dict(extra_vars or {})
    stored = await playbook_credentials(services, playbook, given)
    plan = plan_playbook(
        playbook,
        inventory,
        extra_vars={**stored, **given},
        limit=limit,
        tags=tags,
        skip_tags=skip_tags,
        become=become,
        runs=False,
    )
    plan = await asyncio.to_thread(plan_runs, plan)  # renders the loops: off the event loop
    return replace(plan, credentials=tuple(sorted(stored)))


async def playbook_credentials(
    services: Services, playbook: Playbook, extra_vars: dict[str, Any]
) -> dict[str, str]:
    """The values of the playbook's `secrets:` that neither its vars nor `-e` give and the
    credential store holds (who may use them on which hosts is checked at submission)."""
    names = [n for n in playbook.secrets if n not in playbook.vars and n not in extra_vars]
    store = services.store
    held = await store.call(store.get_credentials, names)
    if not held:
        return {}
    opened = await open_credentials(services, None, "", {n: [] for n in held}, {}, kinds=AS_VALUE)
    return opened.values


async def plan_bundle(
    services: Services,
    name: str,
    text: str,
    files: dict[str, bytes],
    limit: str | None,
    extra_vars: dict[str, Any],
    tags: tuple[str, ...] = (),
    skip_tags: tuple[str, ...] = (),
    become: BecomeRequest | None = None,
) -> PlaybookPlan:
    """Write a submitted playbook and its files to a private bundle dir, load and plan it."""
    if name != Path(name).name or name in ("", ".", ".."):
        raise PlaybookError(f"playbook name {name!r} must be a plain file name, no directory")
    bundle = services.state_dir / "bundles" / secrets.token_hex(8)
    base = name
    entries = {base: text.encode()}
    for rel, data in files.items():
        parts = Path(rel).parts
        if Path(rel).is_absolute() or ".." in parts or not parts:
            raise PlaybookError(
                f"file path {rel!r} must be relative, inside the playbook's directory"
            )
        entries[str(Path(*parts))] = data
    for rel, data in entries.items():
        target = bundle / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        target.write_bytes(data)
    try:
        return await plan_file(services, bundle / base, extra_vars, limit, tags, skip_tags, become)
    except BaseException:  # a refused playbook leaves nothing behind
        shutil.rmtree(bundle, ignore_errors=True)
        raise


async def resume_playbook_job(services: Services, job: Job) -> int:
    """Plan a playbook job again from what it stored and continue it where it stopped."""
    try:
        spec = json.loads(job.vars or "{}")
    except ValueError:
        spec = {}
    if not isinstance(spec, dict) or not spec.get("playbook"):
        raise ResumeError("the job holds no playbook to plan it again from")
    try:
        playbook = await asyncio.to_thread(load_playbook, Path(spec["playbook"]), services.vault)
    except EasyTaskError as exc:
        raise ResumeError(f"{spec['playbook']}: {exc}") from exc
    plan = plan_playbook(
        playbook,
        await services.merged_inventory(),
        extra_vars={
            **(spec.get("extra_vars") or {}),
            **secretfile.secret_extra_vars(services.engine.secrets_dir, job.id or 0),
        },
        limit=spec.get("limit"),
        tags=tuple(spec.get("tags") or ()),
        skip_tags=tuple(spec.get("skip_tags") or ()),
        become=BecomeRequest.from_dict(spec.get("become")),
        runs=False,
    )
    plan = await asyncio.to_thread(plan_runs, plan)  # renders the loops: off the event loop
    check_resumable(plan, spec)
    agentless = {
        h: plan.host_vars.get(h, {}) for h in plan.all_hosts if plan.connection(h) != "agent"
    }
    what = {"kind": "resume", "job": job.id}
    per_host = await host_credentials(services, None, f"resume {job.id}", agentless, what)
    return await resume_playbook(
        services.engine, plan, job, services.pending_timeout, ssh_keys=per_host.ssh_keys
    )
