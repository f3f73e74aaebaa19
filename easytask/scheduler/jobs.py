"""Executing jobs: every run of a job on its host, through an agent link or plain SSH."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from easytask.errors import ConnectError, EasyTaskError, UsageError
from easytask.masking import env_prefix
from easytask.plan import PlannedRun
from easytask.scheduler import events, secretfile
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.output import DEFAULT_LIMIT, RunOutput
from easytask.scheduler.runstate import RunStateWriter
from easytask.store.audit import AuditNote
from easytask.store.db import Store
from easytask.store.models import OFFERED, Job, Run, RunState, as_utc, utcnow
from easytask.store.runs import JOB_END, JOB_RUNNING
from easytask.transport import executor
from easytask.transport.agentless import SSHPool, SSHTarget, wrap_command
from easytask.transport.executor import ExecResult

log = logging.getLogger("easytask.server")

# Lines / bytes waiting for the writer before channels are paused (SSH flow control does the rest).
BACKLOG_HIGH = 50_000
BACKLOG_HIGH_BYTES = 16 << 20


@dataclass
class JobOptions:
    """Per-job execution settings."""

    timeout: float | None = None
    pending_timeout: float = 60.0
    forks: int = 0
    grace: float = 5.0
    timeout_total: float | None = None  # the run's whole timeout (timeout is what is left)
    file_action: Any = None  # a fileops.FileAction: copy, script or fetch instead of a command
    secret_env: dict[str, str] = field(default_factory=dict)  # exported to the command, masked
    masks: tuple[str, ...] = ()  # further values masked in the output (playbook secrets)

    def __post_init__(self) -> None:
        if self.timeout_total is None:
            self.timeout_total = self.timeout


@dataclass
class _Outcome:
    """How one exec session ended: its result, or a state decided before it could start."""

    result: ExecResult | None = None
    state: str | None = None
    reason: str = ""
    duration: float | None = None


def run_timeout_text(options: JobOptions) -> str:
    """The timeout as the user gave it, for reasons."""
    return f"{options.timeout_total:g}s" if options.timeout_total else "timeout"


class KillSwitch(asyncio.Event):
    """An event that also calls back when set (a run waits for its end or a kill without a task
    per wait)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when set; returns what stops that."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)


@dataclass
class _Live:
    """What the engine knows about a run while it is in flight."""

    run: Run
    kill: KillSwitch = field(default_factory=KillSwitch)
    killed_by: str = ""


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
        self.known_hosts = known_hosts
        self.reattach_timeout = reattach_timeout
        self.output_limit: int | None = DEFAULT_LIMIT
        self.run_state = RunStateWriter(store)
        self._live: dict[int, _Live] = {}
        self._jobs: dict[int, asyncio.Task[None]] = {}
        self._connect_limit = asyncio.Semaphore(64)
        self._background_tasks: set[asyncio.Task[None]] = set()
        self._running_jobs: set[int] = set()  # jobs already marked running
        # Ad hoc jobs run here: how many of their runs have not ended yet.  The run that ends
        # last ends its job in the same transaction (a client waits for that end); a job that
        # ended so is taken out.
        self._open_runs: dict[int, int] = {}
        # Hook points (metrics, notifications): called in order; a failing hook is logged only.
        self.on_run_started: list[Callable[[Run], None]] = []
        self.on_job_finished: list[Callable[[Job], Awaitable[None]]] = []
        self.secrets_dir: Path | None = None  # where unfinished jobs' secrets are kept
        # Servers sharing the database (PostgreSQL): hand-offs, follow-ups, relayed events.
        self.cluster: Cluster | None = None
        self._claimed: dict[int, _Live] = {}  # runs executed here for another server's job
        self._claimed_tasks: set[asyncio.Task[None]] = set()

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
    ) -> tuple[Job, list[Run]]:
        """Record a job and its runs (with `audit`, the submission's audit event in the same
        transaction: stored before anything runs), then start executing it."""
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
            masked=bool(_masks(options)),
        )
        now = utcnow()  # given, not defaulted: a model's default factory costs per object
        runs = [
            Run(
                created_at=now,
                job_id=0,
                task=name,
                host=p.host,
                connection=p.connection,
                agent=p.host if p.connection == "agent" else "",
                command=p.command,
            )
            for p in planned
        ]
        job, runs = await self.store.call(self.store.create_job, job, runs, audit)
        assert job.id is not None
        secretfile.save(self.secrets_dir, job.id, options.secret_env, options.masks)
        targets = {p.host: p.vars for p in planned}
        task = asyncio.create_task(self._run_job(job, runs, targets, options), name=f"job-{job.id}")
        self.adopt(job.id, task)
        return job, runs

    # -- kills ------------------------------------------------------------------------------

    def kill_run(self, run_id: int, by: str, *, local: bool = False) -> bool:
        """Ask a run in flight to terminate; False if it is not running here.  With other
        servers, they are asked too (unless `local`: the request came from one of them)."""
        found = False
        for live in (self._live.get(run_id), self._claimed.get(run_id)):
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
        for live in [*self._live.values(), *self._claimed.values()]:
            if live.run.job_id == job_id:
                count += self.kill_run(live.run.id or 0, by, local=True)
        if self.cluster is not None and not local:
            self.cluster.notify("kill", job=job_id, by=by)
        return count

    def executes_here(self, run: Run, claimed: bool = False) -> bool:
        """The caller executes the run itself: it is this server's, and the caller is the claim
        that took it or, when no claim here did, the job's driver."""
        return run.server in ("", self.store.owner) and (claimed or run.id not in self._claimed)

    def killed_by(self, run_id: int) -> str:
        """Who asked a run in flight here to terminate."""
        live = self._live.get(run_id) or self._claimed.get(run_id)
        return live.killed_by if live is not None else ""

    def live_run(self, run_id: int) -> Run | None:
        """A run in flight on this server (its job's, or one claimed for another server)."""
        live = self._live.get(run_id) or self._claimed.get(run_id)
        return live.run if live is not None else None

    # -- execution --------------------------------------------------------------------------

    async def _run_job(
        self, job: Job, runs: list[Run], targets: dict[str, dict[str, Any]], options: JobOptions
    ) -> None:
        limit = asyncio.Semaphore(options.forks) if options.forks > 0 else None
        for run in runs:
            assert run.id is not None
            self._live[run.id] = _Live(run)
        assert job.id is not None
        self._open_runs[job.id] = len(runs)
        try:
            async with asyncio.TaskGroup() as tg:
                for run in runs:
                    tg.create_task(
                        self._guarded(run, targets.get(run.host, {}), options, limit),
                        name=f"run-{run.id}",
                    )
        finally:
            for run in runs:
                self._live.pop(run.id or 0, None)
            ended_here = self._open_runs.pop(job.id, None) is None
        if not ended_here:  # runs ended elsewhere (another server), or some were still open
            await self._finish_job(job.id)

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
            await asyncio.shield(self._finish(run, RunState.TERMINATED, reason="server stopping"))
            raise
        except Exception as exc:
            log.exception("run %s on %s failed unexpectedly", run.id, run.host)
            await self._finish(run, RunState.FAILED, reason=f"internal error: {exc}")

    async def _execute(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        action = options.file_action
        if action is not None:
            from easytask.scheduler import fileops  # fileops builds on this module

            handler = {"copy": fileops.copy, "script": fileops.script, "fetch": fileops.fetch}[
                action.kind
            ]
            await handler(self, run, hostvars, action, replace(options, file_action=None))
            return
        if run.connection == "agent":
            await self._agent_run(run, options)
        else:
            await self._ssh_run(run, hostvars, options)

    async def _ssh_run(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> None:
        assert run.id is not None
        live = self._live[run.id]
        target = self._ssh_target(run.host, hostvars)
        await self._update(
            run, RunState.DISPATCHED, "dispatched", f"ssh {target.host}:{target.port}"
        )
        try:
            async with self._connect_limit:
                conn = await self.pool.get(target)
        except ConnectError as exc:
            await self._finish(run, RunState.UNREACHABLE, reason=str(exc))
            return
        # The host may serve other EasyTask installations whose run ids overlap with ours: the
        # pid file of the run's process group is named after this server's lasting id too.
        key = f"{self.store.owner or 'et'}-{run.id}-{run.attempt}"
        out = self._output(run, masks=_masks(options))
        outcome = await self._stream(
            run,
            live,
            options,
            conn,
            wrap_command(env_prefix(options.secret_env) + run.command, key),
            {},
            out,
            terminate=lambda grace: self.pool.terminate(target, key, grace),
        )
        if outcome.result is not None and outcome.result.lost:
            self.pool.drop(target)
        await self._conclude(run, outcome, out)

    async def _agent_run(self, run: Run, options: JobOptions, live: _Live | None = None) -> None:
        """Execute here, or follow the run while the server holding its agent executes it."""
        assert run.id is not None
        live = live or self._live[run.id]
        give_back: float | None = time.monotonic() + options.pending_timeout
        while True:
            if (
                self.cluster is not None
                and not self.executes_here(run, claimed=live is self._claimed.get(run.id or 0))
                and await self.cluster.follow(run, live.kill, give_back)
            ):
                return
            give_back = await self._agent_run_here(run, options, live, give_back or 0.0)
            if give_back is None:
                return

    async def _agent_run_here(
        self, run: Run, options: JobOptions, live: _Live, pending_until: float
    ) -> float | None:
        """Dispatch to the agent; after a lost link wait for it and re-attach, never re-run.
        Returns None when the run ended, or, when it was offered to the server that holds its
        agent, the time after which this server takes it back if nobody claimed it."""
        assert run.id is not None
        key = f"{run.id}-{run.attempt}"
        can_offer = self.cluster is not None and not _masks(options)
        started = run.state in (RunState.DISPATCHED, RunState.RUNNING)
        deadline = None
        if options.timeout is not None:
            begun = run.started_at or utcnow()
            deadline = (
                time.monotonic()
                + options.timeout
                - max((utcnow() - as_utc(begun)).total_seconds(), 0)
            )
        out: RunOutput | None = None

        async def store_what_came() -> None:
            # Before another server re-attaches: every line received here is stored, and a
            # later re-attach here continues after what is stored, like one in a new process.
            nonlocal out
            if out is not None:
                out.close()
                out = None
            await self.writer.flush()

        while True:
            wait_for = self.reattach_timeout if started else options.pending_timeout
            if deadline is not None and started:
                wait_for = min(wait_for, max(deadline - time.monotonic(), 0) + options.grace)
            patience = wait_for if started else max(pending_until - time.monotonic(), 0.0)
            # an offer taken back after the pending time is not made again: the run ends here
            offer = store_what_came if can_offer and (started or patience > 0) else None
            info = await self._wait_agent(run, live, patience, started, offer=offer, said=wait_for)
            if info is OFFER:
                return time.monotonic() + wait_for if started else pending_until
            if info is None:
                if started:
                    reason = (
                        f"agent {run.host} did not come back within {wait_for:g}s; "
                        "the command may still be running there"
                    )
                    if out is not None:
                        out.close()
                    await self._finish(run, RunState.FAILED, reason=reason, out=out)
                return None
            link = info.link
            assert link is not None
            try:
                attach_from: int | None = None
                if started:
                    status = await link.request("status", run=key)
                    if status.get("state") == "unknown":
                        if run.state == RunState.RUNNING:
                            await self._finish(
                                run,
                                RunState.FAILED,
                                reason="the agent has no record of this run (state dir lost?)",
                            )
                            return None
                        started = False  # the dispatch never reached the agent: start it now
                    elif out is not None:
                        out.reset_partial()  # same process: continue after the last line received
                        attach_from = out.agent_lines
                    else:
                        # A new server process: continue after what is stored.  The agent numbers
                        # only output lines; our seq also counts system lines.
                        await self.writer.flush()
                        attach_from = await self.store.call(self.store.count_output_lines, run.id)
                        next_seq = await self.store.call(self.store.max_seq, run.id) + 1
                        stored = await self.store.call(self.store.output_bytes, run.id)
                        out = self._output(
                            run, first_seq=next_seq, stored=stored, masks=_masks(options)
                        )
                dispatch: asyncio.Future[None] | None = None
                if attach_from is None:
                    # Stored while the command starts, not before: the agent starts a run key
                    # once, so a server that died in between re-attaches instead of re-running.
                    run.state = RunState.DISPATCHED
                    dispatch = asyncio.ensure_future(
                        self._update(run, RunState.DISPATCHED, "dispatched", f"agent {run.host}")
                    )
                    env = {"EASYTASK_RUN": key}  # the command sees EASYTASK_RUN_ID, _ATTEMPT
                    out = self._output(run, masks=_masks(options))
                    command = env_prefix(options.secret_env) + run.command
                else:
                    env = {"EASYTASK_ATTACH": key, "EASYTASK_FROM_SEQ": str(attach_from)}
                    command = "easytask-attach"
                    await self._event(
                        run, "reattached", f"agent {run.host}, from output line {attach_from + 1}"
                    )
                assert out is not None
                started = True
                acks = link.take_acks()
                if acks:  # ended runs whose spools the agent may delete, along for the ride
                    env["EASYTASK_ACK"] = ",".join(acks)
                remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                outcome = await self._stream(
                    run,
                    live,
                    replace(options, timeout=remaining),
                    link.conn,
                    command,
                    env,
                    out,
                    terminate=_agent_terminator(link, key, live),
                    attach=attach_from is not None,
                    dispatched=dispatch,
                )
            except (ConnectionError, OSError, RuntimeError, TimeoutError) as exc:
                log.warning("run %s: agent %s request failed: %s", run.id, run.host, exc)
                continue
            finally:
                await self.registry.release(run.host)
            if outcome.result is not None and outcome.result.lost and not outcome.reason:
                out.system(f"link to agent {run.host} lost; waiting to re-attach", "WARN")
                await self._event(run, "agent lost", "waiting to re-attach")
                continue
            stats = outcome.result.stats if outcome.result is not None else None
            await self._conclude(run, outcome, out, stats)
            self._background(self._acknowledge(run, link, key), f"ack-{key}")
            return None

    async def _acknowledge(self, run: Run, link: Any, key: str) -> None:
        """Let the agent delete the run's spool once every line is stored."""
        try:
            await self.writer.flush()
            link.acknowledge(key)
        except Exception as exc:
            log.info("run %s: could not acknowledge spool on %s: %s", run.id, run.host, exc)

    def _background(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    def _output(
        self, run: Run, first_seq: int = 1, stored: int = 0, masks: tuple[str, ...] = ()
    ) -> RunOutput:
        assert run.id is not None
        return RunOutput(
            run.id,
            run.job_id,
            run.host,
            self.hub,
            self.writer,
            first_seq=first_seq,
            limit=self.output_limit,
            stored=stored,
            masks=masks,
        )

    def _ssh_target(self, host: str, hv: dict[str, Any]) -> SSHTarget:
        return SSHTarget(
            host=str(hv.get("ansible_host") or host),
            port=int(hv.get("ansible_port") or 22),
            user=str(hv["ansible_user"]) if hv.get("ansible_user") else None,
            key_file=str(hv["ansible_ssh_private_key_file"])
            if hv.get("ansible_ssh_private_key_file")
            else None,
            known_hosts=str(hv.get("easytask_known_hosts") or self.known_hosts or "") or None,
        )

    async def _wait_agent(
        self,
        run: Run,
        live: _Live,
        timeout: float,
        started: bool,
        *,
        offer: Callable[[], Awaitable[None]] | None = None,
        said: float | None = None,
    ) -> Any:
        """Take a slot on the run's agent, waiting up to `timeout` for it to be online; with
        `offer`, hand the run over (returns OFFER) if another server holds the agent."""
        said = timeout if said is None else said
        if started or not live.kill.is_set():
            got = self.registry.try_acquire(run.host)  # the usual case: online, a slot free
            if got is not None:
                return got
        info = self.registry.agents.get(run.host)
        if info is None or not info.online:
            if offer is not None and not live.kill.is_set() and await self._try_offer(run, offer):
                return OFFER
            await self._event(
                run, "waiting", f"agent {run.host} not connected; waiting up to {said:g}s"
            )
        acquire = asyncio.create_task(self._acquire(run, timeout, offer))
        killed = asyncio.create_task(live.kill.wait())
        try:
            wait_set = {acquire} if started else {acquire, killed}
            await asyncio.wait(wait_set, return_when=asyncio.FIRST_COMPLETED)
        finally:
            killed.cancel()
        if live.kill.is_set() and not started:
            if acquire.done() and acquire.result() not in (None, OFFER):
                await self.registry.release(run.host)
            else:
                acquire.cancel()
            await self._finish(
                run, RunState.TERMINATED, reason=f"killed by {live.killed_by} before it started"
            )
            return None
        got = acquire.result()
        if got is None and not started:
            await self._finish(
                run,
                RunState.UNREACHABLE,
                reason=f"agent {run.host} did not connect within {said:g}s",
            )
        return got

    async def _try_offer(self, run: Run, prepare: Callable[[], Awaitable[None]]) -> bool:
        """Hand the run to another live server if that one holds its agent (and say so)."""
        info = self.registry.agents.get(run.host)
        if self.cluster is None or (info is not None and info.online):
            return False
        holder = await self.cluster.holder(run.host)
        if holder is None:
            return False
        await prepare()
        if not await self.cluster.offer(run):
            return False
        await self._event(run, "handed over", f"agent {run.host} is held by {holder}")
        return True

    async def _acquire(
        self, run: Run, timeout: float, offer: Callable[[], Awaitable[None]] | None
    ) -> Any:
        """A slot on the run's agent; OFFER once the run went to the server holding the agent."""
        cluster = self.cluster
        if offer is None or cluster is None:
            return await self.registry.acquire(run.host, timeout)
        end = time.monotonic() + timeout
        while True:
            if await self._try_offer(run, offer):
                return OFFER
            slice_ = min(max(end - time.monotonic(), 0.0), cluster.beat)
            got = await self.registry.acquire(run.host, slice_)
            if got is not None or time.monotonic() >= end:
                return got

    async def _stream(
        self,
        run: Run,
        live: _Live,
        options: JobOptions,
        conn: Any,
        command: str,
        env: dict[str, str],
        out: RunOutput,
        terminate: Callable[[float], Any],
        attach: bool = False,
        dispatched: asyncio.Future[None] | None = None,
    ) -> _Outcome:
        """Run (or re-attach to) one command and stream its output; kill or time it out if asked.
        `dispatched`: the storing of the run's dispatch, awaited before it is marked started."""
        assert run.id is not None
        paused = [False]
        execution: executor.Execution | None = None

        def on_data(stream: str, data: bytes) -> None:
            out.data(stream, data)
            if (
                not paused[0]
                and execution is not None
                and self.writer.over(BACKLOG_HIGH, BACKLOG_HIGH_BYTES)
            ):
                chan = execution.channel
                if chan is not None:
                    paused[0] = True
                    chan.pause_reading()
                    self._background(
                        self._resume_when_drained(execution, paused), f"resume-{run.id}"
                    )

        started = time.monotonic()
        try:
            execution = await executor.start(conn, command, on_data, env)
        except Exception as exc:
            if dispatched is not None:
                await dispatched
            if attach:
                return _Outcome(result=ExecResult(lost=True, error=str(exc)))
            return _Outcome(state=RunState.FAILED, reason=f"could not start: {exc}")
        # Stored while the command runs; waited for before the run's end is recorded (the run
        # states are stored in the order they are asked for).
        marked: asyncio.Future[None] | None = None
        if not attach:
            marked = asyncio.ensure_future(self._mark_started(run, dispatched, utcnow()))
        elif dispatched is not None:
            await dispatched
        reason = ""
        try:
            if await _ended_or_stopped(execution.ended, live.kill, options.timeout):
                result = await execution.wait()
            else:
                if live.kill.is_set():
                    reason = f"killed by {live.killed_by}"
                else:
                    reason = f"timeout after {run_timeout_text(options)}"
                out.system(f"terminating: {reason}", "WARN")
                await self._event(run, "terminating", reason)
                try:
                    await terminate(options.grace)
                except Exception as exc:
                    out.system(f"terminate failed: {exc}", "ERROR")
                try:
                    async with asyncio.timeout(options.grace + 10):
                        result = await execution.wait()
                except TimeoutError:
                    execution.close()
                    try:
                        async with asyncio.timeout(10):
                            result = await execution.wait()
                    except TimeoutError:  # the far side never closed: stop waiting for it
                        result = ExecResult(lost=True, error="no answer after terminate")
        finally:
            execution.close()
            if marked is not None:
                await marked
        return _Outcome(result=result, reason=reason, duration=time.monotonic() - started)

    async def _mark_started(
        self, run: Run, dispatched: asyncio.Future[None] | None, at: datetime
    ) -> None:
        if dispatched is not None:
            await dispatched
        await self._update(run, RunState.RUNNING, "started", "", started_at=at)

    async def _conclude(
        self, run: Run, outcome: _Outcome, out: RunOutput, stats: dict[str, Any] | None = None
    ) -> None:
        """Record how a run ended."""
        out.close()
        result = outcome.result
        reason = outcome.reason
        if result is None:
            await self._finish(run, outcome.state or RunState.FAILED, reason=reason, out=out)
            return
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
        extra: dict[str, Any] = {}
        if stats:
            if stats.get("dropped_lines"):
                extra = {
                    "truncated": True,
                    "dropped_bytes": int(stats.get("dropped_bytes") or 0),
                    "dropped_lines": int(stats["dropped_lines"]),
                }
                out.system(
                    f"output cut at the agent's spool limit: {extra['dropped_lines']} lines "
                    f"({extra['dropped_bytes']} bytes) were not kept",
                    "WARN",
                )
            if stats.get("refused"):
                state, reason = RunState.FAILED, f"refused by the agent: {stats['refused']}"
            if stats.get("lost"):
                state, reason = RunState.FAILED, f"lost: {stats.get('reason', 'supervisor died')}"
        await self._finish(
            run,
            state,
            reason=reason,
            exit_code=result.exit_code,
            signal=result.signal,
            out=out,
            duration=outcome.duration,
            stats=stats,
            **extra,
        )

    async def _resume_when_drained(self, execution: executor.Execution, paused: list[bool]) -> None:
        await self.writer.wait_below(BACKLOG_HIGH // 2, BACKLOG_HIGH_BYTES // 2)
        paused[0] = False
        chan = execution.channel
        if chan is not None:
            chan.resume_reading()

    # -- pieces the playbook runner uses -----------------------------------------------------

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
        self._live.setdefault(run.id, _Live(run))

    async def finish(self, run: Run, state: str, *, reason: str = "") -> None:
        """Record a run as ended without executing anything (skipped, template errors)."""
        await self._finish(run, state, reason=reason)

    async def job_event(self, job: Job, text: str) -> None:
        """Tell viewers of a job something that concerns all its runs."""
        log.info("job %s: %s", job.id, text)
        self._publish(events.job_notice(job.id, text), (f"job:{job.id}", f"jobstate:{job.id}"))

    def execute_claimed(self, run: Run) -> None:
        """Execute a run of another server's job, claimed because its agent is held here."""
        assert run.id is not None
        live = _Live(run)
        self._claimed[run.id] = live
        task = asyncio.create_task(self._claimed_run(run, live), name=f"claimed-{run.id}")
        self._claimed_tasks.add(task)
        task.add_done_callback(self._claimed_tasks.discard)

    async def _claimed_run(self, run: Run, live: _Live) -> None:
        assert run.id is not None
        try:
            job = await self.store.call(self.store.get_job, run.job_id)
            if job is None:
                return
            options = JobOptions(timeout=job.timeout, pending_timeout=job.pending_timeout)
            if job.masked:
                kept = secretfile.load(self.secrets_dir, run.job_id)
                if not kept:
                    await self._unmaskable([run])
                    return
                options = replace(options, **kept)
            await self._agent_run(run, options, live)
        except asyncio.CancelledError:
            raise  # left to the next server that holds the agent (see cluster.orphaned_claims)
        except Exception as exc:
            log.exception("claimed run %s on %s failed unexpectedly", run.id, run.host)
            await self._finish(run, RunState.FAILED, reason=f"internal error: {exc}")
        finally:
            self._claimed.pop(run.id, None)

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

    async def file_connection(self, run: Run, hostvars: dict[str, Any], options: JobOptions) -> Any:
        """A connection for SFTP to the run's host, or None (the run is then recorded as ended)."""
        assert run.id is not None
        if run.connection == "agent":
            live = self._live[run.id]
            info = await self._wait_agent(run, live, options.pending_timeout, False)
            if info is None:
                return None
            await self.registry.release(run.host)
            assert info.link is not None
            return info.link.conn
        target = self._ssh_target(run.host, hostvars)
        await self._update(
            run, RunState.DISPATCHED, "dispatched", f"ssh {target.host}:{target.port}"
        )
        try:
            return await self.pool.get(target)
        except ConnectError as exc:
            await self._finish(run, RunState.UNREACHABLE, reason=str(exc))
            return None

    # -- recording --------------------------------------------------------------------------

    async def _event(self, run: Run, kind: str, detail: str) -> None:
        assert run.id is not None
        await self.run_state.change(run.id, kind, detail)

    async def _update(self, run: Run, state: str, event: str, detail: str, **fields: Any) -> None:
        assert run.id is not None
        then = ""
        if state == RunState.RUNNING and run.job_id not in self._running_jobs:
            self._running_jobs.add(run.job_id)
            then = JOB_RUNNING  # the job is marked running with its first run's start
        await self.run_state.change(
            run.id, event, detail, job_id=run.job_id, then=then, state=state, **fields
        )
        run.state = state
        for key, value in fields.items():
            setattr(run, key, value)
        if state == RunState.RUNNING:
            for hook in self.on_run_started:
                _call_hook(hook, run)
        self._publish_run(run, events.run_state(run.id, run.host, state))

    async def _finish(
        self,
        run: Run,
        state: str,
        *,
        reason: str = "",
        exit_code: int | None = None,
        signal: str | None = None,
        out: RunOutput | None = None,
        duration: float | None = None,
        stats: dict[str, Any] | None = None,
        **extra: Any,
    ) -> None:
        assert run.id is not None
        fields: dict[str, Any] = {
            "state": state,
            "reason": reason,
            "finished_at": utcnow(),
            **extra,
        }
        if exit_code is not None:
            fields["exit_code"] = exit_code
        if signal is not None:
            fields["signal"] = signal
        if out is not None:
            if out.first_seq > 1:  # re-attached: count what is stored, from every session
                await self.writer.flush()
                fields["out_lines"] = await self.store.call(self.store.count_output_lines, run.id)
            else:
                fields["out_lines"] = out.lines
            fields["out_bytes"] = int(stats["bytes"]) if stats and "bytes" in stats else out.bytes
            if out.truncated and not extra.get("truncated"):
                fields.update(
                    truncated=True, dropped_lines=out.dropped_lines, dropped_bytes=out.dropped_bytes
                )
        detail = state + (f": {reason}" if reason else "")
        if run.id in self._claimed:
            # the job's own server reads the output (results, counts) once it sees the end
            await self.writer.flush()
        left = self._open_runs.get(run.job_id)
        last = False
        if left is not None and run.state not in RunState.FINAL:
            self._open_runs[run.job_id] = left - 1
            last = left == 1
        ended = await self.run_state.change(
            run.id, "finished", detail, job_id=run.job_id, then=JOB_END if last else "", **fields
        )
        run.state = state
        run.exit_code = exit_code
        self._publish_run(
            run,
            events.run_finished(
                run.id,
                run.host,
                state,
                reason=reason,
                exit_code=exit_code,
                duration=duration,
                seq=out.seq if out else 0,
            ),
        )
        if ended is not None:
            self._open_runs.pop(run.job_id, None)
            await self.job_finished(ended)

    def _publish_run(self, run: Run, event: dict[str, Any]) -> None:
        topics = f"run:{run.id}", f"job:{run.job_id}", f"jobstate:{run.job_id}", "runs"
        self._publish(event, topics)

    def _publish(self, event: dict[str, Any], topics: tuple[str, ...]) -> None:
        """To this server's viewers, and to the other servers' (their consoles follow too)."""
        self.hub.publish(event, *topics)
        if self.cluster is not None:
            self.cluster.relay(event, topics)

    # -- lifecycle --------------------------------------------------------------------------

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
        for run in await self.store.call(self.store.unfinished_runs, job_ids):
            assert run.id is not None
            if run.job_id not in kinds:
                job = await self.store.call(self.store.get_job, run.job_id)
                kinds[run.job_id] = job.kind if job else "adhoc"
            if kinds[run.job_id] != "adhoc":
                playbook_jobs.setdefault(run.job_id, []).append(run)
                continue
            if run.connection == "ssh" and run.state != RunState.QUEUED:
                await self._finish(run, RunState.FAILED, reason=f"connection lost ({why})")
                await self._finish_job(run.job_id)
                counts["failed"] += 1
                continue
            await self._event(run, "resumed", f"by server {self.registry.server_id}")
            by_job.setdefault(run.job_id, []).append(run)
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
                await self._finish(run, RunState.TERMINATED, reason=f"not resumed: {reason}")
                counts["failed"] += 1
            await self._finish_job(job_id)
        for job_id, runs in by_job.items():
            job = await self.store.call(self.store.get_job, job_id)
            if job is None:
                continue
            kept = secretfile.load(self.secrets_dir, job_id)
            if job.masked and not kept:
                await self._unmaskable(runs)
                await self._finish_job(job_id)
                continue
            options = JobOptions(
                timeout=job.timeout,
                pending_timeout=job.pending_timeout,
                forks=job.forks,
                **kept,
            )
            targets = {}
            for run in runs:
                try:
                    targets[run.host] = hostvars(run.host)
                except Exception:
                    targets[run.host] = {}
            task = asyncio.create_task(
                self._run_job(job, runs, targets, options), name=f"job-{job_id}"
            )
            self._jobs[job_id] = task
            task.add_done_callback(self._forget_job(job_id))
            counts["resumed"] += len(runs)
        return counts

    async def _unmaskable(self, runs: list[Run]) -> None:
        """A taken-over job whose secrets its stopped server kept: its runs end, never unmasked."""
        from easytask.store import servers as rows

        for run in runs:
            assert run.id is not None
            if run.server == OFFERED and not await self.store.call(
                rows.retract, self.store, run.id, self.store.owner
            ):
                continue  # claimed meanwhile: that server ends it the same way
            await self._finish(
                run,
                RunState.FAILED,
                reason="the secrets masked in this job's output were kept by the server that "
                "stopped; not continued (a command may still be running)",
            )

    async def job_finished(self, job: Job) -> None:
        """Tell viewers and the finish hooks that a job reached its final state."""
        assert job.id is not None
        secretfile.drop(self.secrets_dir, job.id)  # nothing left to mask
        self._publish(events.job_state(job.id, job.state), (f"job:{job.id}", f"jobstate:{job.id}"))
        log.info("job %s %s", job.id, job.state, extra={"job": job.id, "state": job.state})
        for hook in self.on_job_finished:
            try:
                await hook(job)
            except Exception:
                log.exception("job %s: a finish hook failed", job.id)

    async def _finish_job(self, job_id: int) -> None:
        done = await self.store.call(self.store.finish_job_if_done, job_id)
        if done is not None:
            await self.job_finished(done)

    def _forget_job(self, job_id: int) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            self._jobs.pop(job_id, None)
            self._running_jobs.discard(job_id)

        return forget

    async def close(self) -> None:
        """Cancel jobs in flight (their runs are recorded as terminated)."""
        tasks = [*self._jobs.values(), *self._claimed_tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._background_tasks:  # acknowledgements on their way: a moment to arrive
            _, late = await asyncio.wait(set(self._background_tasks), timeout=2)
            for task in late:
                task.cancel()


OFFER: Any = object()  # _wait_agent: the run was handed to the server that holds its agent


async def _ended_or_stopped(
    ended: asyncio.Future[None], kill: KillSwitch, timeout: float | None
) -> bool:
    """Wait until the command ended (True), or it was killed or timed out (False).

    Callbacks on the two and a timer, not a task per wait: a fan-out waits once per run.
    """
    if ended.done():
        return True
    if kill.is_set():
        return False
    loop = asyncio.get_running_loop()
    wake: asyncio.Future[None] = loop.create_future()

    def poke(*_: Any) -> None:
        if not wake.done():
            wake.set_result(None)

    ended.add_done_callback(poke)
    unhook = kill.on_set(poke)
    timer = loop.call_later(timeout, poke) if timeout is not None else None
    try:
        await wake
    finally:
        ended.remove_done_callback(poke)
        unhook()
        if timer is not None:
            timer.cancel()
    return ended.done()


def _call_hook(hook: Callable[[Run], None], run: Run) -> None:
    try:
        hook(run)
    except Exception:
        log.exception("run %s: a hook failed", run.id)


def _masks(options: JobOptions) -> tuple[str, ...]:
    return (*options.secret_env.values(), *options.masks)


def _agent_terminator(link: Any, key: str, live: _Live) -> Callable[[float], Any]:
    """Ask the agent to TERM, then KILL, the run's process group."""

    def terminate(grace: float) -> Any:
        return link.request(
            "cancel", run=key, grace=grace, by=live.killed_by or "timeout", timeout=grace + 15
        )

    return terminate


__all__ = ["JobEngine", "JobOptions"]
