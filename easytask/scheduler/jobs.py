"""Executing jobs: every run of a job on its host, through an agent link or plain SSH."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from easytask.errors import ConnectError, UsageError
from easytask.plan import PlannedRun
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.output import RunOutput
from easytask.store.db import Store, dumps
from easytask.store.models import Job, Run, RunState, utcnow
from easytask.transport import executor
from easytask.transport.agentless import SSHPool, SSHTarget, wrap_command
from easytask.transport.executor import ExecResult

log = logging.getLogger("easytask.server")

BACKLOG_HIGH = 50_000  # lines waiting for the writer before a run's channel is paused


@dataclass
class JobOptions:
    """Per-job execution settings."""

    timeout: float | None = None
    pending_timeout: float = 60.0
    forks: int = 0
    grace: float = 5.0


@dataclass
class _Live:
    """What the engine knows about a run while it is in flight."""

    run: Run
    kill: asyncio.Event = field(default_factory=asyncio.Event)
    killed_by: str = ""


class JobEngine:
    """Plans nothing and decides nothing about hosts: it runs runs and records what happened."""

    def __init__(self, store: Store, writer: LogWriter, hub: LiveHub, registry: AgentRegistry,
                 pool: SSHPool, known_hosts: str | None = None) -> None:
        self.store = store
        self.writer = writer
        self.hub = hub
        self.registry = registry
        self.pool = pool
        self.known_hosts = known_hosts
        self._live: dict[int, _Live] = {}
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._connect_limit = asyncio.Semaphore(64)
        self._pending_resumes: set[asyncio.Task[None]] = set()

    # -- submission -------------------------------------------------------------------------

    async def submit(self, planned: list[PlannedRun], *, name: str, pattern: str, command: str,
                     options: JobOptions, user: str, source: str, kind: str = "adhoc") -> tuple[Job, list[Run]]:
        """Record a job and its runs, then start executing it."""
        if not planned:
            raise UsageError("nothing to run")
        job = Job(kind=kind, name=name, pattern=pattern, command=command, submitted_by=user,
                  source=source, timeout=options.timeout, pending_timeout=options.pending_timeout,
                  forks=options.forks)
        runs = [
            Run(job_id=0, task=name, host=p.host, connection=p.connection,
                agent=p.host if p.connection == "agent" else "", command=p.command)
            for p in planned
        ]
        job, runs = await self.store.call(self.store.create_job, job, runs)
        assert job.id is not None
        targets = {p.host: p.vars for p in planned}
        task = asyncio.create_task(self._run_job(job, runs, targets, options), name=f"job-{job.id}")
        self._jobs[job.id] = task
        job_id = job.id
        task.add_done_callback(lambda _t: self._jobs.pop(job_id, None))
        return job, runs

    # -- kills ------------------------------------------------------------------------------

    def kill_run(self, run_id: int, by: str) -> bool:
        """Ask a run in flight to terminate; False if it is not running here."""
        live = self._live.get(run_id)
        if live is None:
            return False
        live.killed_by = by
        live.kill.set()
        return True

    def kill_job(self, job_id: int, by: str) -> int:
        """Terminate every run of a job in flight; returns how many were asked."""
        count = 0
        for live in list(self._live.values()):
            if live.run.job_id == job_id:
                count += self.kill_run(live.run.id or 0, by)
        return count

    # -- execution --------------------------------------------------------------------------

    async def _run_job(self, job: Job, runs: list[Run], targets: dict[str, dict[str, Any]],
                       options: JobOptions) -> None:
        limit = asyncio.Semaphore(options.forks) if options.forks > 0 else None
        for run in runs:
            assert run.id is not None
            self._live[run.id] = _Live(run)
        try:
            async with asyncio.TaskGroup() as tg:
                for run in runs:
                    tg.create_task(self._guarded(run, targets[run.host], options, limit),
                                   name=f"run-{run.id}")
        finally:
            for run in runs:
                self._live.pop(run.id or 0, None)
        assert job.id is not None
        done = await self.store.call(self.store.finish_job_if_done, job.id)
        if done is not None:
            self.hub.publish({"t": "job", "job": job.id, "state": done.state}, f"job:{job.id}")

    async def _guarded(self, run: Run, hostvars: dict[str, Any], options: JobOptions,
                       limit: asyncio.Semaphore | None) -> None:
        # Each run records its own failure; one bad host never cancels the others.
        try:
            if limit is None:
                await self._execute(run, hostvars, options)
            else:
                async with limit:
                    await self._execute(run, hostvars, options)
        except asyncio.CancelledError:
            await self._finish(run, RunState.TERMINATED, reason="server stopping")
            raise
        except Exception as exc:
            log.exception("run %s on %s failed unexpectedly", run.id, run.host)
            await self._finish(run, RunState.FAILED, reason=f"internal error: {exc}")

    async def _execute(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        assert run.id is not None
        live = self._live[run.id]
        if run.connection == "agent":
            acquired = await self._wait_agent(run, live, options.pending_timeout)
            if acquired is None:
                return
            assert acquired.link is not None
            conn = acquired.link.conn
            link = acquired.link
            command = run.command
            try:
                await self._exec(run, live, options, conn, command,
                                 terminate=lambda grace: link.request(
                                     "cancel", run=f"{run.id}-{run.attempt}", grace=grace,
                                     by=live.killed_by or "timeout", timeout=grace + 15))
            finally:
                await self.registry.release(run.host)
        else:
            target = self._ssh_target(run.host, hostvars)
            await self._update(run, RunState.DISPATCHED, "dispatched", f"ssh {target.host}:{target.port}")
            try:
                async with self._connect_limit:
                    conn = await self.pool.get(target)
            except ConnectError as exc:
                await self._finish(run, RunState.UNREACHABLE, reason=str(exc))
                return
            key = f"{run.id}-{run.attempt}"
            await self._exec(run, live, options, conn, wrap_command(run.command, key),
                             terminate=lambda grace: self.pool.terminate(target, key, grace))

    def _ssh_target(self, host: str, hv: dict[str, Any]) -> SSHTarget:
        return SSHTarget(
            host=str(hv.get("ansible_host") or host),
            port=int(hv.get("ansible_port") or 22),
            user=str(hv["ansible_user"]) if hv.get("ansible_user") else None,
            key_file=str(hv["ansible_ssh_private_key_file"]) if hv.get("ansible_ssh_private_key_file") else None,
            known_hosts=str(hv.get("easytask_known_hosts") or self.known_hosts or "") or None,
        )

    async def _wait_agent(self, run: Run, live: _Live, pending_timeout: float) -> Any:
        """Take a slot on the run's agent, waiting up to pending_timeout for it to be online."""
        info = self.registry.agents.get(run.host)
        if info is None or not info.online:
            await self._event(run, "waiting", f"agent {run.host} not connected; waiting up to {pending_timeout:g}s")
        acquire = asyncio.create_task(self.registry.acquire(run.host, pending_timeout))
        killed = asyncio.create_task(live.kill.wait())
        try:
            await asyncio.wait({acquire, killed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            killed.cancel()
        if live.kill.is_set():
            if acquire.done() and acquire.result() is not None:
                await self.registry.release(run.host)
            else:
                acquire.cancel()
            await self._finish(run, RunState.TERMINATED, reason=f"killed by {live.killed_by} before it started")
            return None
        got = acquire.result()
        if got is None:
            await self._finish(run, RunState.UNREACHABLE,
                               reason=f"agent {run.host} did not connect within {pending_timeout:g}s")
            return None
        await self._update(run, RunState.DISPATCHED, "dispatched", f"agent {run.host}")
        return got

    async def _exec(self, run: Run, live: _Live, options: JobOptions, conn: Any, command: str,
                    terminate: Callable[[float], Any]) -> None:
        assert run.id is not None
        out = RunOutput(run.id, run.job_id, run.host, self.hub, self.writer)
        paused = [False]
        execution: executor.Execution | None = None

        def on_data(stream: str, data: bytes) -> None:
            out.data(stream, data)
            if self.writer.backlog > BACKLOG_HIGH and not paused[0] and execution is not None:
                chan = execution.channel
                if chan is not None:
                    paused[0] = True
                    chan.pause_reading()
                    waiter = asyncio.create_task(self._resume_when_drained(execution, paused))
                    self._pending_resumes.add(waiter)
                    waiter.add_done_callback(self._pending_resumes.discard)

        env = {"EASYTASK_RUN_ID": str(run.id), "EASYTASK_ATTEMPT": str(run.attempt)}
        started = time.monotonic()
        try:
            execution = await executor.start(conn, command, on_data, env)
        except Exception as exc:
            await self._finish(run, RunState.FAILED, reason=f"could not start: {exc}")
            return
        await self._update(run, RunState.RUNNING, "started", "", started_at=utcnow())
        reason = ""
        state: str
        result: ExecResult
        try:
            waiter = asyncio.create_task(execution.wait())
            killer = asyncio.create_task(live.kill.wait())
            try:
                done, _ = await asyncio.wait({waiter, killer}, timeout=options.timeout,
                                             return_when=asyncio.FIRST_COMPLETED)
            finally:
                killer.cancel()
            if waiter in done:
                result = waiter.result()
            else:
                if live.kill.is_set():
                    reason = f"killed by {live.killed_by}"
                else:
                    reason = f"timeout after {options.timeout:g}s"
                out.system(f"terminating: {reason}", "WARN")
                await self._event(run, "terminating", reason)
                try:
                    await terminate(options.grace)
                except Exception as exc:
                    out.system(f"terminate failed: {exc}", "ERROR")
                try:
                    async with asyncio.timeout(options.grace + 10):
                        result = await waiter
                except TimeoutError:
                    execution.close()
                    result = await waiter
        finally:
            execution.close()
        out.close()
        duration = time.monotonic() - started
        if reason:
            state = RunState.TERMINATED
        elif result.lost:
            state = RunState.FAILED
            reason = f"connection lost: {result.error}"
            out.system(reason, "ERROR")
        elif result.exit_code == 0:
            state = RunState.SUCCESS
        elif result.signal:
            state = RunState.TERMINATED
            reason = f"killed by signal {result.signal}"
        else:
            state = RunState.FAILED
            reason = f"exit code {result.exit_code}"
        await self._finish(run, state, reason=reason, exit_code=result.exit_code,
                           signal=result.signal, out=out, duration=duration)

    async def _resume_when_drained(self, execution: executor.Execution, paused: list[bool]) -> None:
        await self.writer.wait_below(BACKLOG_HIGH // 2)
        paused[0] = False
        chan = execution.channel
        if chan is not None:
            chan.resume_reading()

    # -- recording --------------------------------------------------------------------------

    async def _event(self, run: Run, kind: str, detail: str) -> None:
        assert run.id is not None
        await self.store.call(self.store.update_run, run.id, kind, detail)

    async def _update(self, run: Run, state: str, event: str, detail: str, **fields: Any) -> None:
        assert run.id is not None
        fresh = await self.store.call(self.store.update_run, run.id, event, detail, state=state, **fields)
        run.state = fresh.state
        self._publish_run(run, state)

    async def _finish(self, run: Run, state: str, *, reason: str = "", exit_code: int | None = None,
                      signal: str | None = None, out: RunOutput | None = None,
                      duration: float | None = None) -> None:
        assert run.id is not None
        fields: dict[str, Any] = {"state": state, "reason": reason, "finished_at": utcnow()}
        if exit_code is not None:
            fields["exit_code"] = exit_code
        if signal is not None:
            fields["signal"] = signal
        if out is not None:
            fields["out_bytes"] = out.bytes
            fields["out_lines"] = out.lines
        detail = state + (f": {reason}" if reason else "")
        await self.store.call(self.store.update_run, run.id, "finished", detail, **fields)
        run.state = state
        run.exit_code = exit_code
        self._publish_run(run, state, reason=reason, exit_code=exit_code, duration=duration,
                          seq=out.seq if out else 0)

    def _publish_run(self, run: Run, state: str, **extra: Any) -> None:
        event = {"t": "run", "run": run.id, "host": run.host, "state": state, **extra}
        self.hub.publish(event, f"run:{run.id}", f"job:{run.job_id}", "runs")

    # -- lifecycle --------------------------------------------------------------------------

    async def reconcile(self) -> int:
        """Runs left unfinished by a previous server process end as failed (connection lost)."""
        count = 0
        for run in await self.store.call(self.store.unfinished_runs):
            assert run.id is not None
            await self.store.call(self.store.update_run, run.id, "finished",
                                  "failed: connection lost (server restarted)",
                                  state=RunState.FAILED, reason="connection lost (server restarted)",
                                  finished_at=utcnow())
            await self.store.call(self.store.finish_job_if_done, run.job_id)
            count += 1
        return count

    async def close(self) -> None:
        """Cancel jobs in flight (their runs are recorded as terminated)."""
        tasks = list(self._jobs.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def job_dict(job: Job) -> dict[str, Any]:
    """A job as the API returns it."""
    return {
        "id": job.id, "kind": job.kind, "name": job.name, "pattern": job.pattern,
        "command": job.command, "submitted_by": job.submitted_by, "source": job.source,
        "state": job.state, "created_at": _iso(job.created_at), "finished_at": _iso(job.finished_at),
        "timeout": job.timeout,
    }


def run_dict(run: Run) -> dict[str, Any]:
    """A run as the API returns it."""
    duration = None
    if run.started_at and run.finished_at:
        duration = (run.finished_at - run.started_at).total_seconds()
    return {
        "id": run.id, "job": run.job_id, "task": run.task, "host": run.host,
        "connection": run.connection, "agent": run.agent, "command": run.command,
        "state": run.state, "attempt": run.attempt, "exit_code": run.exit_code,
        "signal": run.signal, "reason": run.reason, "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at), "finished_at": _iso(run.finished_at),
        "duration": duration, "out_bytes": run.out_bytes, "out_lines": run.out_lines,
        "truncated": run.truncated,
    }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.isoformat() + "Z"
    return value.isoformat()


__all__ = ["JobEngine", "JobOptions", "dumps", "job_dict", "run_dict"]
