"""The job engine: submits jobs, kills runs, and wires the parts that execute and record them."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from asyncssh import SSHClientConnection

from easytask.errors import UsageError
from easytask.plan import PlannedRun
from easytask.scheduler import fileops, secretfile
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.dispatch import Dispatcher
from easytask.scheduler.execution import Execution
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.inflight import InFlight, JobOptions, LiveRun, masks
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.output import RunOutput
from easytask.scheduler.recording import Recorder
from easytask.scheduler.resume import TakeOver
from easytask.store.audit import AuditNote
from easytask.store.db import Store
from easytask.store.models import Job, Run, RunState, utcnow
from easytask.store.runs import new_runs
from easytask.store.servers import ClaimDetails
from easytask.transport.agentless import SSHPool

log = logging.getLogger("easytask.server")

FILE_OPERATIONS = {"copy": fileops.copy, "script": fileops.script, "fetch": fileops.fetch}


class JobEngine:
    """Plans nothing and decides nothing about hosts: it runs runs and records what happened."""

    def __init__(
        self,
        store: Store,
        writer: LogWriter,
        hub: LiveHub,
        registry: AgentRegistry,
        pool: SSHPool,
        known_hosts: str | None = None,
        reattach_timeout: float = 3600.0,
    ) -> None:
        self.store = store
        self.writer = writer
        self.hub = hub
        self.registry = registry
        self.pool = pool
        self.inflight = InFlight(store)
        self.recorder = Recorder(store, writer, hub, self.inflight)
        self.dispatcher = Dispatcher(registry, self.recorder)
        self.execution = Execution(
            store,
            writer,
            registry,
            pool,
            self.inflight,
            self.recorder,
            self.dispatcher,
            known_hosts=known_hosts,
            reattach_timeout=reattach_timeout,
        )
        self.take_over = TakeOver(
            store, registry, self.inflight, self.recorder, self.execution, self._start_job
        )
        self._jobs: dict[int, asyncio.Task[None]] = {}
        # Hook points (metrics, notifications): called in order; a failing hook is logged only.
        self.on_run_started: list[Callable[[Run], None]] = self.recorder.on_run_started
        self.on_job_finished: list[Callable[[Job], Awaitable[None]]] = self.recorder.on_job_finished
        self._cluster: Cluster | None = None

    # -- settings the server gives after construction ------------------------------------------

    @property
    def cluster(self) -> Cluster | None:
        """Servers sharing the database (PostgreSQL): hand-offs, follow-ups, relayed events."""
        return self._cluster

    @cluster.setter
    def cluster(self, cluster: Cluster | None) -> None:
        self._cluster = cluster
        self.recorder.cluster = cluster
        self.dispatcher.cluster = cluster
        self.execution.cluster = cluster

    @property
    def secrets_dir(self) -> Path | None:
        """Where unfinished jobs' secrets are kept."""
        return self.recorder.secrets_dir

    @secrets_dir.setter
    def secrets_dir(self, path: Path | None) -> None:
        self.recorder.secrets_dir = path

    @property
    def output_limit(self) -> int | None:
        """Stored bytes of output per run (head and tail); None: no limit."""
        return self.recorder.output_limit

    @output_limit.setter
    def output_limit(self, limit: int | None) -> None:
        self.recorder.output_limit = limit

    @property
    def reattach_timeout(self) -> float:
        """Seconds a started agent run waits for its agent to come back."""
        return self.execution.reattach_timeout

    @reattach_timeout.setter
    def reattach_timeout(self, seconds: float) -> None:
        self.execution.reattach_timeout = seconds

    # -- submission -------------------------------------------------------------------------

    async def submit(
        self,
        planned: list[PlannedRun],
        *,
        name: str,
        pattern: str,
        command: str,
        options: JobOptions,
        user: str,
        source: str,
        kind: str = "adhoc",
        audit: AuditNote | None = None,
        job_vars: dict[str, Any] | None = None,
    ) -> tuple[Job, list[Run]]:
        """Record a job and its runs (with `audit`, the submission's audit event in the same
        transaction: stored before anything runs), then start executing it. `job_vars` are
        kept in `job.vars` (the upload a copy or script sends, for retention)."""
        if not planned:
            raise UsageError("nothing to run")
        job = Job(
            kind=kind,
            name=name,
            pattern=pattern,
            command=command,
            submitted_by=user,
            source=source,
            timeout=options.timeout,
            pending_timeout=options.pending_timeout,
            forks=options.forks,
            masked=bool(masks(options)),
            vars=json.dumps(job_vars or {}),
        )
        if options.become.as_dict():  # what a later server process needs to run it the same
            job.vars = json.dumps({"become": options.become.as_dict()})
        now = utcnow()  # given, not defaulted: a model's default factory costs per object
        runs = new_runs(
            {
                "created_at": now,
                "job_id": 0,
                "task": name,
                "host": p.host,
                "connection": p.connection,
                "agent": p.host if p.connection == "agent" else "",
                "command": p.command,
            }
            for p in planned
        )
        targets = {p.host: p.vars for p in planned}
        offered = await self.dispatcher.offers_at_submit(runs, targets, options)
        job, runs = await self.store.call(self.store.create_job, job, runs, audit, offered)
        assert job.id is not None
        secretfile.save(self.secrets_dir, job.id, options.secret_env, options.masks)
        if offered and self.cluster is not None:
            # followed from now: an end told before the job's task reaches a run is not missed
            self.cluster.expect([runs[i].id or 0 for i in offered])
            self.cluster.notify("offer")
        self._start_job(job, runs, targets, options)
        return job, runs

    def _start_job(
        self, job: Job, runs: list[Run], targets: dict[str, dict[str, Any]], options: JobOptions
    ) -> None:
        assert job.id is not None
        task = asyncio.create_task(self._run_job(job, runs, targets, options), name=f"job-{job.id}")
        self.adopt(job.id, task)

    # -- kills ------------------------------------------------------------------------------

    def kill_run(self, run_id: int, by: str, *, local: bool = False) -> bool:
        """Ask a run in flight to terminate; False if it is not running here.  With other
        servers, they are asked too (unless `local`: the request came from one of them)."""
        found = False
        for live in (self.inflight.live.get(run_id), self.inflight.claimed.get(run_id)):
            if live is not None:
                live.killed_by = by
                live.kill.set()
                found = True
        if self.cluster is not None and not local:
            self.cluster.notify("kill", run=run_id, by=by)
        return found

    def kill_job(self, job_id: int, by: str, *, local: bool = False) -> int:
        """Terminate every run of a job in flight; returns how many were asked here."""
        count = 0
        for live in [*self.inflight.live.values(), *self.inflight.claimed.values()]:
            if live.run.job_id == job_id:
                count += self.kill_run(live.run.id or 0, by, local=True)
        if self.cluster is not None and not local:
            self.cluster.notify("kill", job=job_id, by=by)
        return count

    def executes_here(self, run: Run, claimed: bool = False) -> bool:
        """The caller executes the run itself: it is this server's, and the caller is the claim
        that took it or, when no claim here did, the job's driver."""
        return self.inflight.executes_here(run, claimed)

    def killed_by(self, run_id: int) -> str:
        """Who asked a run in flight here to terminate."""
        live = self.inflight.get(run_id)
        return live.killed_by if live is not None else ""

    def live_run(self, run_id: int) -> Run | None:
        """A run in flight on this server (its job's, or one claimed for another server)."""
        live = self.inflight.get(run_id)
        return live.run if live is not None else None

    # -- execution --------------------------------------------------------------------------

    async def _run_job(
        self, job: Job, runs: list[Run], targets: dict[str, dict[str, Any]], options: JobOptions
    ) -> None:
        limit = asyncio.Semaphore(options.forks) if options.forks > 0 else None
        for run in runs:
            assert run.id is not None
            self.inflight.live[run.id] = LiveRun(run)
        assert job.id is not None
        self.inflight.open_runs[job.id] = len(runs)
        try:
            async with asyncio.TaskGroup() as tg:
                for run in runs:
                    tg.create_task(
                        self._guarded(run, targets.get(run.host, {}), options, limit),
                        name=f"run-{run.id}",
                    )
        finally:
            for run in runs:
                self.inflight.live.pop(run.id or 0, None)
                if self.cluster is not None:  # one offered at submission and never followed
                    self.cluster.forget(run.id or 0)
            ended_here = self.inflight.open_runs.pop(job.id, None) is None
        if not ended_here:  # runs ended elsewhere (another server), or some were still open
            await self.recorder.finish_job(job.id)

    async def _guarded(
        self,
        run: Run,
        hostvars: dict[str, Any],
        options: JobOptions,
        limit: asyncio.Semaphore | None,
    ) -> None:
        # Each run records its own failure; one bad host never cancels the others.
        try:
            if limit is None:
                await self._execute(run, hostvars, options)
            else:
                async with limit:
                    await self._execute(run, hostvars, options)
        except asyncio.CancelledError:
            if run.connection == "agent" and run.state in (RunState.DISPATCHED, RunState.RUNNING):
                # The command goes on under the agent's supervisor; the next server re-attaches.
                raise
            if self.cluster is not None:
                raise  # another server sharing the database takes the job over
            await asyncio.shield(
                self.recorder.finish(run, RunState.TERMINATED, reason="server stopping")
            )
            raise
        except Exception as exc:
            log.exception("run %s on %s failed unexpectedly", run.id, run.host)
            await self.recorder.finish(run, RunState.FAILED, reason=f"internal error: {exc}")

    async def _execute(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        action = options.file_action
        if action is not None:
            operation = FILE_OPERATIONS[action.kind]
            await operation(self, run, hostvars, action, replace(options, file_action=None))
            return
        await self.execution.run(run, hostvars, options)

    # -- pieces the playbook runner and file operations use ------------------------------------

    def running_here(self, job_id: int) -> bool:
        """True while this server drives the job (it exists; no need to ask the database)."""
        return job_id in self._jobs

    def adopt(self, job_id: int, task: asyncio.Task[None]) -> None:
        """Keep a job task started elsewhere (playbooks) so that close() can stop it."""
        self._jobs[job_id] = task
        task.add_done_callback(self._forget_job(job_id))

    def track(self, run: Run) -> None:
        """Make a run killable (attempt rows created after the job started)."""
        assert run.id is not None
        self.inflight.live.setdefault(run.id, LiveRun(run))

    def output(self, run: Run, masks: tuple[str, ...] = ()) -> RunOutput:
        """Where a run's output goes (numbered, published live, queued for storage, secret
        values masked)."""
        return self.recorder.output(run, masks=masks)

    async def update(self, run: Run, state: str, event: str, detail: str, **fields: Any) -> None:
        """Record a run's move to a state that is not final (dispatched, running)."""
        await self.recorder.update(run, state, event, detail, **fields)

    async def finish(
        self,
        run: Run,
        state: str,
        *,
        reason: str = "",
        exit_code: int | None = None,
        out: RunOutput | None = None,
        duration: float | None = None,
    ) -> None:
        """Record a run as ended (skipped, template errors, file operations)."""
        await self.recorder.finish(
            run, state, reason=reason, exit_code=exit_code, out=out, duration=duration
        )

    async def job_event(self, job: Job, text: str) -> None:
        """Tell viewers of a job something that concerns all its runs."""
        await self.recorder.job_event(job, text)

    async def job_finished(self, job: Job) -> None:
        """Tell viewers and the finish hooks that a job reached its final state."""
        await self.recorder.job_finished(job)

    def execute_claimed(self, runs: list[Run], details: ClaimDetails) -> None:
        """Execute runs of other servers' jobs, claimed because their agents are held here."""
        self.take_over.execute_claimed(runs, details)

    async def execute_one(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        """Execute one run row to its end (the same path as ad hoc runs)."""
        self.track(run)
        await self._execute(run, hostvars, options)

    async def output_text(self, run_id: int) -> tuple[str, str]:
        """A finished run's stdout and stderr as text (for `results.<task>`)."""
        await self.writer.flush()
        rows = await self.store.call(self.store.read_lines, run_id)
        out = "\n".join(r.text for r in rows if r.stream == "stdout")
        err = "\n".join(r.text for r in rows if r.stream == "stderr")
        return out, err

    async def file_connection(
        self, run: Run, hostvars: dict[str, Any], options: JobOptions
    ) -> SSHClientConnection | None:
        """A connection for SFTP to the run's host, or None (the run is then recorded as ended)."""
        return await self.execution.file_connection(run, hostvars, options)

    # -- lifecycle --------------------------------------------------------------------------

    async def resume(
        self,
        hostvars: Callable[[str], dict[str, Any]],
        resume_playbook: Callable[[Job], Awaitable[int]] | None = None,
        job_ids: list[int] | None = None,
        why: str = "server restarted",
    ) -> dict[str, int]:
        """Take over what a previous server process left (see TakeOver.resume)."""
        return await self.take_over.resume(hostvars, resume_playbook, job_ids, why)

    def _forget_job(self, job_id: int) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._jobs.pop(job_id, None)
            self.inflight.running_jobs.discard(job_id)

        return forget

    async def close(self) -> None:
        """Cancel jobs in flight (their runs are recorded as terminated)."""
        tasks = [*self._jobs.values(), *self.take_over.claimed_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.execution.close()
