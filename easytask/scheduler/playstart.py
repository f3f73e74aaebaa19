"""A playbook job started: submitted (recorded, then run in the background) or resumed after a
server restart from the rows a previous server process left."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path

from easytask.errors import EasyTaskError
from easytask.plan import PlaybookPlan, check_limits
from easytask.scheduler import secretfile
from easytask.scheduler.engine import JobEngine
from easytask.scheduler.playbooks import PlaybookJob
from easytask.scheduler.playrows import (
    ANY_HOST,
    ResumeError,
    item_of,
    job_runs_for,
    resume_spec,
    task_order,
)
from easytask.scheduler.renderthreads import off_loop
from easytask.store.audit import AuditNote
from easytask.store.models import Job, Run, RunState


async def submit_playbook(
    engine: JobEngine,
    plan: PlaybookPlan,
    *,
    user: str,
    source: str,
    pending_timeout: float,
    kind: str = "playbook",
    audit: AuditNote | None = None,
    ssh_keys: Mapping[str, str] | None = None,
    become_passwords: Mapping[str, str] | None = None,
) -> tuple[Job, list[Run]]:
    """Record a playbook job and its runs (with `audit`, the submission's audit event in the
    same transaction), then run it in the background. A template past its limits is refused
    first (TemplateLimit), with nothing stored."""
    await off_loop(check_limits, plan)
    job = Job(
        kind=kind,
        name=plan.name,
        pattern=plan.playbook.hosts,
        command=Path(plan.playbook.path).name,
        submitted_by=user,
        source=source,
        pending_timeout=pending_timeout,
        forks=plan.forks or 0,
        vars=json.dumps({**resume_spec(plan), "tasks": task_order(plan)}),
    )
    runs = job_runs_for(plan)
    if not runs:
        raise EasyTaskError("the playbook selects no host for any task")
    job, runs = await engine.store.call(engine.store.create_job, job, runs, audit)
    assert job.id is not None
    if plan.playbook.notify:
        hooks = [(n.url, n.events) for n in plan.playbook.notify]
        await engine.store.call(engine.store.add_job_webhooks, job.id, hooks)
    for run in runs:
        engine.track(run)
    runner = PlaybookJob(engine, plan, job, runs, pending_timeout)
    runner.ssh_keys = dict(ssh_keys or {})
    runner.become_passwords = dict(become_passwords or {})
    assert job.id is not None
    masks = await off_loop(lambda: {m for host in plan.all_hosts for m in runner.masks(host)})
    if plan.playbook.secrets or masks:  # every host's values: a resumed run's output stays masked
        hidden = {k: v for k, v in plan.extra_vars.items() if k in plan.playbook.secrets}
        secretfile.save(engine.secrets_dir, job.id, {}, tuple(sorted(masks)), hidden)
    task = asyncio.create_task(_run(engine, runner), name=f"job-{job.id}")
    engine.adopt(job.id, task)
    return job, runs


async def resume_playbook(
    engine: JobEngine,
    plan: PlaybookPlan,
    job: Job,
    pending_timeout: float,
    ssh_keys: Mapping[str, str] | None = None,
) -> int:
    """Continue a playbook job a previous server process left unfinished; returns runs to go.

    Finished runs keep their result (for `needs`, `when` and `results.<task>`); a run in flight
    on an agent is re-attached; queued runs and retries run in their batches as before.
    """
    assert job.id is not None
    rows = await engine.store.call(engine.store.job_runs, job.id)
    # the planned runs' rows first; then those added for the items of loops over results
    originals = sorted((r for r in rows if r.attempt == 1), key=lambda r: r.id or 0)
    extra = originals[len(plan.runs) :]
    originals = originals[: len(plan.runs)]
    if len(originals) != len(plan.runs) or any(
        (row.task != planned.name and not (planned.at_run and item_of(row.task, planned.name)))
        or (planned.host is not None and row.host != planned.host)
        or (planned.host is None and row.host != ANY_HOST and row.host not in planned.candidates)
        for row, planned in zip(originals, plan.runs, strict=False)
    ):
        raise ResumeError("the inventory no longer gives the hosts the job was planned for")
    latest: dict[tuple[str, str], Run] = {}
    for row in sorted(rows, key=lambda r: (r.attempt, r.id or 0)):
        latest[(row.task, row.host)] = row
    current = [latest[(row.task, row.host)] for row in originals]
    runner = PlaybookJob(engine, plan, job, current, pending_timeout)
    runner.ssh_keys = dict(ssh_keys or {})
    runner.marks = await engine.store.call(engine.store.job_run_marks, job.id)
    runner.stored = dict(latest)
    left = sum(1 for row in extra if latest[(row.task, row.host)].state not in RunState.FINAL)
    for slot in runner.slots.values():
        if slot.planned.at_run and slot.run.task != slot.planned.name:
            # its loop was expanded: its items are taken up when it runs (`PlaybookJob._expand`)
            left += slot.run.state not in RunState.FINAL
            continue
        left += await runner.restore(slot)
    task_ = asyncio.create_task(_run(engine, runner), name=f"job-{job.id}")
    engine.adopt(job.id, task_)
    return left


async def _run(engine: JobEngine, runner: PlaybookJob) -> None:
    try:
        await runner.run()
    finally:
        job_id = runner.job.id or 0
        done = await engine.store.call(engine.store.finish_job_if_done, job_id)
        if done is not None:
            await engine.job_finished(done)
