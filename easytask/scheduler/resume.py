"""Taking runs over: what a stopped server process left, and runs claimed for another server."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from easytask.errors import EasyTaskError
from easytask.plan.become import Become, BecomeRequest
from easytask.scheduler import secretfile
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.execution import Execution
from easytask.scheduler.inflight import InFlight, JobOptions, LiveRun
from easytask.scheduler.recording import Recorder
from easytask.store import servers as rows
from easytask.store.db import Store
from easytask.store.models import OFFERED, Job, Run, RunState

log = logging.getLogger("easytask.server")

# Starts executing a job's runs on this server (its task is kept by the engine).
StartJob = Callable[[Job, list[Run], dict[str, dict[str, Any]], JobOptions], None]


def adhoc_become(job: Job) -> BecomeRequest:
    """The become an ad hoc job asked for (`run -b`), as `JobEngine.submit` kept it."""
    try:
        spec = json.loads(job.vars or "{}")
    except ValueError:
        return BecomeRequest()
    return BecomeRequest.from_dict(spec.get("become") if isinstance(spec, dict) else None)


class TakeOver:
    """Goes on with runs this server did not start: after a restart, after another server
    stopped, and runs of another server's job claimed because their agent is held here."""

    def __init__(
        self,
        store: Store,
        registry: AgentRegistry,
        inflight: InFlight,
        recorder: Recorder,
        execution: Execution,
        start_job: StartJob,
    ) -> None:
        self.store = store
        self.registry = registry
        self.inflight = inflight
        self.recorder = recorder
        self.execution = execution
        self.start_job = start_job
        self.claimed_tasks: set[asyncio.Task[None]] = set()

    async def resume(
        self,
        hostvars: Callable[[str], dict[str, Any]],
        resume_playbook: Callable[[Job], Awaitable[int]] | None = None,
        job_ids: list[int] | None = None,
        why: str = "server restarted",
    ) -> dict[str, int]:
        """Take over what a previous server process left: queued runs run, agent runs re-attach.

        Runs that were dispatched to agentless hosts cannot be recovered (the link is gone with
        the process): they end failed with reason "connection lost". A playbook job goes on
        through `resume_playbook` (which plans it again); when that raises an EasyTaskError, or
        without it, the job's unfinished runs end terminated with the reason.
        """
        counts = {"resumed": 0, "failed": 0}
        by_job: dict[int, list[Run]] = {}
        playbook_jobs: dict[int, list[Run]] = {}
        kinds: dict[int, str] = {}
        # one transaction for the `resumed` events of many runs, not one each
        noted: list[asyncio.Future[Any]] = []
        for run in await self.store.call(self.store.unfinished_runs, job_ids):
            assert run.id is not None
            if run.job_id not in kinds:
                job = await self.store.call(self.store.get_job, run.job_id)
                kinds[run.job_id] = job.kind if job else "adhoc"
            if kinds[run.job_id] != "adhoc":
                playbook_jobs.setdefault(run.job_id, []).append(run)
                continue
            if run.connection != "agent" and run.state != RunState.QUEUED:
                await self.recorder.finish(run, RunState.FAILED, reason=f"connection lost ({why})")
                await self.recorder.finish_job(run.job_id)
                counts["failed"] += 1
                continue
            noted.append(
                self.recorder.event_soon(run, "resumed", f"by server {self.registry.server_id}")
            )
            by_job.setdefault(run.job_id, []).append(run)
        await asyncio.gather(*noted)
        for job_id, left in playbook_jobs.items():
            job = await self.store.call(self.store.get_job, job_id)
            reason = f"{why}: this kind of job cannot be continued"
            if job is not None and resume_playbook is not None:
                try:
                    counts["resumed"] += await resume_playbook(job)
                    continue
                except EasyTaskError as exc:
                    reason = str(exc)
                    log.warning("job %s not resumed: %s", job_id, reason)
            for run in left:
                await self.recorder.finish(
                    run, RunState.TERMINATED, reason=f"not resumed: {reason}"
                )
                counts["failed"] += 1
            await self.recorder.finish_job(job_id)
        for job_id, runs in by_job.items():
            job = await self.store.call(self.store.get_job, job_id)
            if job is None:
                continue
            kept = secretfile.load(self.recorder.secrets_dir, job_id)
            if job.masked and not kept:
                await self._unmaskable(runs)
                await self.recorder.finish_job(job_id)
                continue
            options = JobOptions(
                timeout=job.timeout,
                pending_timeout=job.pending_timeout,
                forks=job.forks,
                become=adhoc_become(job),
                **kept,
            )
            targets = {}
            for run in runs:
                try:
                    targets[run.host] = hostvars(run.host)
                except Exception:
                    targets[run.host] = {}
            self.start_job(job, runs, targets, options)
            counts["resumed"] += len(runs)
        return counts

    async def _unmaskable(self, runs: list[Run]) -> None:
        """A taken-over job whose secrets its stopped server kept: its runs end, never unmasked."""
        for run in runs:
            assert run.id is not None
            if run.server == OFFERED and not await self.store.call(
                rows.retract, self.store, run.id, self.store.owner
            ):
                continue  # claimed meanwhile: that server ends it the same way
            await self.recorder.finish(
                run,
                RunState.FAILED,
                reason="the secrets masked in this job's output were kept by the server that "
                "stopped; not continued (a command may still be running)",
            )

    def execute_claimed(self, runs: list[Run], details: rows.ClaimDetails) -> None:
        """Execute runs of other servers' jobs, claimed because their agents are held here
        (their jobs and become users read with the claim, once for them all)."""
        for run in runs:
            assert run.id is not None
            live = LiveRun(run)
            self.inflight.claimed[run.id] = live
            task = asyncio.create_task(
                self._claimed_run(run, live, details), name=f"claimed-{run.id}"
            )
            self.claimed_tasks.add(task)
            task.add_done_callback(self.claimed_tasks.discard)

    async def _claimed_run(self, run: Run, live: LiveRun, known: rows.ClaimDetails) -> None:
        assert run.id is not None
        try:
            job = known.jobs.get(run.job_id)
            if job is None:
                return
            options = JobOptions(timeout=job.timeout, pending_timeout=job.pending_timeout)
            asked = known.become.get(run.id, "")
            if asked:  # whom the job's server resolved it to become (see Execution.run)
                options = replace(options, as_user=Become(asked))
            if job.masked:
                kept = secretfile.load(self.recorder.secrets_dir, run.job_id)
                if not kept:
                    await self._unmaskable([run])
                    return
                options = replace(options, **kept)
            await self.execution.agent_run(run, options, live)
        except asyncio.CancelledError:
            raise  # left to the next server that holds the agent (see cluster.orphaned_claims)
        except Exception as exc:
            log.exception("claimed run %s on %s failed unexpectedly", run.id, run.host)
            await self.recorder.finish(run, RunState.FAILED, reason=f"internal error: {exc}")
        finally:
            self.inflight.claimed.pop(run.id, None)
