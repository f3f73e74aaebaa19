"""Executing a planned playbook: batches, the `needs` DAG, `when`, retries, results, files."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import shlex
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from easytask.errors import EasyTaskError
from easytask.facts import fact_vars, uses_facts
from easytask.masking import Masker
from easytask.plan import (
    PlannedTask,
    PlaybookPlan,
    RenderedAction,
    RunKey,
    TaskRun,
    check_limits,
    evaluate_when,
    render_action,
    stop_after_batch,
    task_result,
)
from easytask.plan.outcome import ignored
from easytask.scheduler import fileops, secretfile
from easytask.scheduler.engine import JobEngine
from easytask.scheduler.inflight import JobOptions
from easytask.scheduler.verdicts import judge_attempt, mark_ignored
from easytask.store.audit import AuditNote
from easytask.store.models import Job, Run, RunState
from easytask.store.runs import CHANGED, IGNORED
from easytask.templating import render
from easytask.vault import vault_values

log = logging.getLogger("easytask.server")

ANY_HOST = "(any)"
OK_FOR_NEEDS = (RunState.SUCCESS, RunState.SKIPPED)

T = TypeVar("T")

# Templates render in these threads, never on the event loop: a render's work is bounded
# (easytask.templating: steps, output, time) but may take up to its time limit.
_RENDER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="easytask-render")


async def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a call that renders templates in the render threads."""
    return await asyncio.get_running_loop().run_in_executor(_RENDER, partial(fn, *args))


def _prepare(task: PlannedTask, host: str, context: Mapping[str, Any]) -> RenderedAction | None:
    """The run's action rendered for its host, or None when its `when` is false."""
    if not evaluate_when(task, host, context):
        return None
    return render_action(task, host, context)


@dataclass
class _Slot:
    """Where a planned run stands: its current row, final state, result for `results.<task>`."""

    planned: TaskRun
    run: Run
    done: asyncio.Event = field(default_factory=asyncio.Event)
    state: str = RunState.QUEUED
    skipped_by_when: bool = False
    result: dict[str, Any] | None = None
    ignored: bool = False  # it failed, and its task's ignore_errors lets the play go past it
    resumed: bool = False  # its row was started (or a retry queued) by a previous server process


class PlaybookJob:
    """One playbook job in flight."""

    def __init__(
        self,
        engine: JobEngine,
        plan: PlaybookPlan,
        job: Job,
        runs: list[Run],
        pending_timeout: float,
    ) -> None:
        self.engine = engine
        self.plan = plan
        self.job = job
        self.pending_timeout = pending_timeout
        self.slots: dict[RunKey, _Slot] = {
            planned.key: _Slot(planned, run) for planned, run in zip(plan.runs, runs, strict=True)
        }
        forks = plan.forks or 0
        self._forks = asyncio.Semaphore(forks) if forks > 0 else None
        self.stopped_reason = ""
        # from the credential store, for agentless hosts: host -> SSH key, become password
        self.ssh_keys: dict[str, str] = {}
        self.become_passwords: dict[str, str] = {}
        # agentless hosts gather facts once per job, when the playbook names one
        self._gather = uses_facts(plan.playbook.text)
        self._facts: dict[str, asyncio.Task[dict[str, Any]]] = {}

    async def host_facts(self, host: str) -> dict[str, Any]:
        """An agentless host's fact variables for this job (gathered once, on first use);
        none for agents (theirs come with the inventory) or when the playbook names no fact."""
        if not self._gather or self.plan.connection(host) not in ("ssh", "local"):
            return {}
        if host not in self._facts:
            hostvars = dict(self.plan.host_vars.get(host, {}))
            options = JobOptions(ssh_keys={h: k for h, k in self.ssh_keys.items() if h == host})
            self._facts[host] = asyncio.create_task(
                self.engine.execution.gather_facts(host, hostvars, options), name=f"facts-{host}"
            )
        return fact_vars(await asyncio.shield(self._facts[host]))

    async def run(self) -> None:
        """Run every batch in order; stop early when max_fail_percentage says so."""
        batches = sorted({s.planned.batch for s in self.slots.values()})
        for index in batches:
            batch = [s for s in self.slots.values() if s.planned.batch == index]
            if self.stopped_reason:
                for slot in batch:
                    await self._skip(slot, self.stopped_reason)
                continue
            async with asyncio.TaskGroup() as tg:
                for slot in batch:
                    tg.create_task(self._guarded(slot), name=f"play-run-{slot.run.id}")
            hosts = {s.run.host for s in batch if s.planned.host is not None}
            failed = {
                s.run.host
                for s in batch
                if s.planned.host is not None and s.state not in OK_FOR_NEEDS and not s.ignored
            }
            if index != batches[-1] and stop_after_batch(
                len(failed), len(hosts), self.plan.max_fail_percentage
            ):
                pct = self.plan.max_fail_percentage
                self.stopped_reason = (
                    f"not run: {len(failed)} of {len(hosts)} hosts failed in batch {index + 1}"
                    + (f" (max_fail_percentage {pct:g})" if pct is not None else " (all failed)")
                )
                await self.engine.job_event(self.job, self.stopped_reason)

    async def _guarded(self, slot: _Slot) -> None:
        try:
            await self._one(slot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("playbook run %s failed unexpectedly", slot.run.id)
            await self.engine.finish(slot.run, RunState.FAILED, reason=f"internal error: {exc}")
            slot.state = RunState.FAILED
        finally:
            slot.done.set()

    async def _skip(self, slot: _Slot, reason: str) -> None:
        await self.engine.finish(slot.run, RunState.SKIPPED, reason=reason)
        slot.state = RunState.SKIPPED
        slot.result = task_result(rc=None, state=RunState.SKIPPED)
        slot.done.set()

    async def _one(self, slot: _Slot) -> None:
        planned = slot.planned
        task = self.plan.task(planned.task)
        if slot.done.is_set():  # finished before a server restart
            return
        for need in planned.needs:
            dep = self.slots[need]
            await dep.done.wait()
            if (dep.state not in OK_FOR_NEEDS and not dep.ignored) or (
                dep.state == RunState.SKIPPED and not dep.skipped_by_when
            ):
                await self._skip(
                    slot,
                    f"needs {need.task!r}"
                    + (f" on {need.host}" if need.host else "")
                    + f", which ended {dep.state}",
                )
                return
        host = planned.host
        if host is None and slot.run.host != ANY_HOST:
            host = slot.run.host  # placed by a previous server process
        if host is None:
            host = self.engine.registry.least_busy(planned.candidates)
            await self.engine.store.call(
                self.engine.store.update_run,
                slot.run.id or 0,
                "placed",
                f"the agent with the most headroom: {host}",
                host=host,
                agent=host,
            )
            slot.run.host = host
            slot.run.agent = host
        results = self._results(planned)
        try:
            facts = await self.host_facts(host)
        except Exception as exc:
            reason = f"gathering facts failed: {exc}"
            await self.engine.finish(slot.run, RunState.UNREACHABLE, reason=reason)
            slot.state = RunState.UNREACHABLE
            slot.result = task_result(stderr=reason, rc=None, state=RunState.UNREACHABLE)
            return
        context = self.plan.context(host, results, facts)
        try:
            action = await off_loop(_prepare, task, host, context)
            if action is None:
                slot.skipped_by_when = True
                await self._skip(slot, f"when is false: {task.when}")
                return
        except EasyTaskError as exc:
            await self.engine.finish(slot.run, RunState.FAILED, reason=str(exc))
            slot.state = RunState.FAILED
            slot.result = task_result(stderr=str(exc), rc=None, state=RunState.FAILED)
            return
        if self._forks is not None:
            async with self._forks:
                await self._attempts(slot, task, action, host, context)
        else:
            await self._attempts(slot, task, action, host, context)

    def _results(self, planned: TaskRun) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, key in planned.results_from.items():
            slot = self.slots.get(key)
            if slot is not None and slot.result is not None:
                out[name] = slot.result
        return out

    async def _attempts(
        self, slot: _Slot, task: PlannedTask, action: Any, host: str, context: Mapping[str, Any]
    ) -> None:
        """Run the task, retrying with delay and backoff; every attempt is its own run row,
        judged by the task's failed_when/changed_when when it ends."""
        run = slot.run
        attempt = run.attempt
        resumed = slot.resumed
        while True:
            if resumed:
                await self._resumed_attempt(run, task, action, host)
                resumed = False
            else:
                await self._attempt(run, task, action, host)
            fresh = await self.engine.store.call(self.engine.store.get_run, run.id or 0)
            assert fresh is not None
            verdict = await judge_attempt(self.engine, fresh, task.task, host, context, off_loop)
            state = verdict.state
            if (
                state == RunState.SUCCESS
                or attempt > task.retries
                or verdict.error
                or state == RunState.TERMINATED
                and "killed by" in fresh.reason
            ):
                break
            attempt += 1
            wait = task.retry_wait(attempt)
            nxt = await self.engine.store.call(self.engine.store.add_attempt, run.id or 0, attempt)
            await self.engine.store.call(
                self.engine.store.update_run,
                run.id or 0,
                "retry scheduled",
                f"attempt {attempt} (run {nxt.id}) in {wait:g}s",
            )
            self.engine.track(nxt)
            await asyncio.sleep(wait)
            run = nxt
            slot.run = nxt
        slot.state = state
        if ignored(task.task, state, verdict.error):
            slot.ignored = True
            await mark_ignored(self.engine, run, verdict)
        stdout, stderr = await self.engine.output_text(run.id or 0)
        slot.result = task_result(stdout, stderr, fresh.exit_code, state, changed=verdict.changed)

    def masks(self, host: str) -> tuple[str, ...]:
        """The values of the playbook's secret variables on a host, and every value that came
        from an Ansible Vault (its inventory vars, the play's vars and vars_files)."""
        values = []
        if self.plan.playbook.secrets:
            context = self.plan.context(host)
            for name in self.plan.playbook.secrets:
                if name in context:
                    try:
                        values.append(render("{{ " + name + " }}", context, what=f"secret {name}"))
                    except EasyTaskError:
                        continue
        values += self.vault_masks(host)
        return tuple(v for v in dict.fromkeys(values) if v)

    def vault_masks(self, host: str) -> tuple[str, ...]:
        """The values on a host that came from an Ansible Vault (cheap: no rendering)."""
        return tuple(vault_values(self.plan.host_vars.get(host, {}), self.plan.playbook.vars))

    async def _attempt(self, run: Run, task: PlannedTask, action: Any, host: str) -> None:
        masks = (
            await off_loop(self.masks, host)
            if self.plan.playbook.secrets
            else self.vault_masks(host)
        )
        options = JobOptions(
            timeout=task.timeout,
            pending_timeout=self.pending_timeout,
            masks=masks,
            env=dict(action.env),  # exported apart from the command line (see shell_line)
            ssh_keys={h: k for h, k in self.ssh_keys.items() if h == host},
            become_passwords={h: p for h, p in self.become_passwords.items() if h == host},
            become=self.plan.become_request(task),
        )
        hostvars = dict(self.plan.host_vars.get(host, {}))
        if action.kind == "copy":
            await fileops.copy(self.engine, run, hostvars, action, options)
            return
        if action.kind == "script":
            await fileops.script(self.engine, run, hostvars, action, options)
            return
        # the stored command shows the exports, and **** where a secret was rendered into it
        shown = Masker(masks)(action.shell_line())
        await self.engine.store.call(
            self.engine.store.update_run, run.id or 0, None, "", command=shown
        )
        run.command = action.shell_line(env=False)
        await self.engine.execute_one(run, hostvars, options)

    async def _resumed_attempt(self, run: Run, task: PlannedTask, action: Any, host: str) -> None:
        """Go on with an attempt a previous server process left queued or in flight."""
        if run.state == RunState.QUEUED or action.kind == "copy":
            # A copy sends whole files to a temporary name: sending again is safe.
            await self._attempt(run, task, action, host)
            return
        if run.connection != "agent":
            # The link to an agentless host went with the old process.
            await self.engine.finish(
                run, RunState.FAILED, reason="connection lost (server restarted)"
            )
            return
        # On an agent the command goes on under its supervisor: re-attach with the stored command
        # (for a script, the one that runs the already uploaded file).
        options = JobOptions(
            timeout=task.timeout,
            pending_timeout=self.pending_timeout,
            become=self.plan.become_request(task),
        )
        await self.engine.execute_one(run, dict(self.plan.host_vars.get(host, {})), options)


def job_runs_for(plan: PlaybookPlan) -> list[Run]:
    """One queued run row per planned run (run_on any: host chosen when it starts)."""
    runs = []
    for planned in plan.runs:
        task = plan.task(planned.task)
        host = planned.host or ANY_HOST
        connection = plan.connection(planned.host or planned.candidates[0])
        runs.append(
            Run(
                job_id=0,
                task=planned.task,
                host=host,
                connection=connection,
                agent=host if connection == "agent" else "",
                command=_preview(task),
            )
        )
    return runs


def _preview(task: PlannedTask) -> str:
    action = task.action
    if action.kind == "copy":
        return f"copy {action.path_text} -> {action.dest}"
    if action.kind == "script":
        return f"script {action.path_text}" + (f" {action.args}" if action.args else "")
    if action.argv is not None:
        return shlex.join(action.argv)
    return action.command or ""


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


def task_order(plan: PlaybookPlan) -> list[dict[str, Any]]:
    """The job's tasks in the order they run, each with the tasks it needs (kept in `job.vars`
    for the job page's matrix)."""
    return [
        {"name": task.name, "needs": list(task.needs), "implied": task.needs_implied}
        for task in plan.tasks
    ]


def resume_spec(plan: PlaybookPlan) -> dict[str, Any]:
    """What a later server process needs to plan the same job again (kept in `job.vars`).

    Secret extra vars are left out: they wait in the job's secrets file (mode 0600) instead.
    """
    secret = set(plan.playbook.secrets)
    return {
        "playbook": str(Path(plan.playbook.path).resolve()),
        "sha256": hashlib.sha256(plan.playbook.text.encode()).hexdigest(),
        "limit": plan.limit,
        "tags": list(plan.tags),
        "skip_tags": list(plan.skip_tags),
        "extra_vars": {k: v for k, v in plan.extra_vars.items() if k not in secret},
        **({"become": plan.become.as_dict()} if plan.become.as_dict() else {}),
        **({"warnings": list(plan.warnings)} if plan.warnings else {}),
    }


class ResumeError(EasyTaskError):
    """The playbook job cannot be continued after the server restarted."""


def check_resumable(plan: PlaybookPlan, spec: dict[str, Any]) -> None:
    """Raise ResumeError unless `plan` was made from the very playbook text the job started with."""
    digest = hashlib.sha256(plan.playbook.text.encode()).hexdigest()
    if digest != spec.get("sha256"):
        raise ResumeError(f"{spec.get('playbook')} changed since the job started")


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
    originals = sorted((r for r in rows if r.attempt == 1), key=lambda r: r.id or 0)
    if len(originals) != len(plan.runs) or any(
        row.task != planned.task
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
    marks = await engine.store.call(engine.store.job_run_marks, job.id)
    left = 0
    for slot in runner.slots.values():
        run = slot.run
        task = plan.task(slot.planned.task)
        engine.track(run)
        if run.state not in RunState.FINAL:
            left += 1
            slot.resumed = run.attempt > 1 or run.state != RunState.QUEUED
            if slot.resumed:
                await engine.store.call(
                    engine.store.update_run, run.id or 0, "resumed", "by a restarted server"
                )
            continue
        if _retry_due(run, task):
            # The old process ended this attempt but died before queuing the next one.
            nxt = await engine.store.call(engine.store.add_attempt, run.id or 0, run.attempt + 1)
            engine.track(nxt)
            slot.run = nxt
            slot.resumed = True
            left += 1
            continue
        slot.state = run.state
        slot.skipped_by_when = run.reason.startswith("when is false")
        slot.ignored = IGNORED in marks.get(run.id or 0, ())
        if run.state == RunState.SKIPPED:
            slot.result = task_result(rc=None, state=RunState.SKIPPED)
        else:
            stdout, stderr = await engine.output_text(run.id or 0)
            changed = CHANGED in marks.get(run.id or 0, ())
            slot.result = task_result(stdout, stderr, run.exit_code, run.state, changed=changed)
        slot.done.set()
    task_ = asyncio.create_task(_run(engine, runner), name=f"job-{job.id}")
    engine.adopt(job.id, task_)
    return left


def _retry_due(run: Run, task: PlannedTask) -> bool:
    """Whether the retry loop would have queued another attempt after this ended one."""
    return (
        run.state in (RunState.FAILED, RunState.TERMINATED, RunState.UNREACHABLE)
        and run.attempt <= task.retries
        and "killed by" not in run.reason
        and not run.reason.startswith("internal error")
        and (run.started_at is not None or run.state == RunState.UNREACHABLE)
    )


async def _run(engine: JobEngine, runner: PlaybookJob) -> None:
    try:
        await runner.run()
    finally:
        job_id = runner.job.id or 0
        done = await engine.store.call(engine.store.finish_job_if_done, job_id)
        if done is not None:
            await engine.job_finished(done)
