"""Recording what runs do: state changes, run events, a run's and a job's end, live events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from easytask.scheduler import events, secretfile
from easytask.scheduler.batches import Batched
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.inflight import InFlight
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.output import DEFAULT_LIMIT, RunOutput
from easytask.scheduler.runstate import RunStateWriter
from easytask.store.db import Store
from easytask.store.models import Job, Run, RunState, utcnow
from easytask.store.runs import JOB_END, JOB_RUNNING
from easytask.transport.executor import ExecResult

log = logging.getLogger("easytask.server")


@dataclass
class Outcome:
    """How one exec session ended: its result, or a state decided before it could start."""

    result: ExecResult | None = None
    state: str | None = None
    reason: str = ""
    duration: float | None = None
    # when the session ended, as this server saw it: the run's finished_at (recorded later,
    # after its slot went to the next run)
    ended_at: datetime = field(default_factory=utcnow)


class Recorder:
    """Stores each change of a run (and its job's end) and tells the viewers, here and on the
    other servers."""

    def __init__(self, store: Store, writer: LogWriter, hub: LiveHub, inflight: InFlight) -> None:
        self.store = store
        self.writer = writer
        self.hub = hub
        self.inflight = inflight
        self.run_state = RunStateWriter(store)
        self._points = Batched(lambda ids: store.call(store.resume_points, ids), (0, 0, 0))
        self.output_limit: int | None = DEFAULT_LIMIT
        self.secrets_dir: Path | None = None  # where unfinished jobs' secrets are kept
        self.cluster: Cluster | None = None
        # Hook points (metrics, notifications): called in order; a failing hook is logged only.
        self.on_run_started: list[Callable[[Run], None]] = []
        self.on_job_finished: list[Callable[[Job], Awaitable[None]]] = []

    def output(
        self, run: Run, first_seq: int = 1, stored: int = 0, masks: tuple[str, ...] = ()
    ) -> RunOutput:
        """Where a run's output goes: numbered, published live, queued for storage."""
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

    async def resume_point(self, run_id: int) -> tuple[int, int, int]:
        """Where a run re-attached by a new server process continues (`Store.resume_point`),
        after every line received here is stored: the runs re-attached meanwhile (a fleet's,
        after a hand-off) are read in one query."""
        await self.writer.flush()
        return await self._points.get(run_id)

    async def event(self, run: Run, kind: str, detail: str) -> None:
        """Add an event to a run's timeline."""
        assert run.id is not None
        await self.run_state.change(run.id, kind, detail)

    def event_soon(self, run: Run, kind: str, detail: str) -> asyncio.Future[Any]:
        """`event` without waiting: queued now, in order; the future is done once it is stored
        (events queued together are stored together)."""
        assert run.id is not None
        return self.run_state.queue(run.id, kind, detail)

    def note(self, run: Run, kind: str, detail: str) -> None:
        """Add an event to a run's timeline without waiting for it: stored before any change
        of the run asked for after it (a failure is logged)."""
        assert run.id is not None
        self.run_state.queue(run.id, kind, detail).add_done_callback(_log_failure)

    async def update(self, run: Run, state: str, event: str, detail: str, **fields: Any) -> None:
        """Move a run to a new state (not a final one) with its timeline event."""
        await self.update_soon(run, state, event, detail, **fields)

    def update_soon(
        self, run: Run, state: str, event: str, detail: str, **fields: Any
    ) -> asyncio.Future[None]:
        """`update` without a task: queued now, after every change of the run asked for
        before; the future is done once it is stored and the viewers were told."""
        assert run.id is not None
        then = ""
        if state == RunState.RUNNING and run.job_id not in self.inflight.running_jobs:
            self.inflight.running_jobs.add(run.job_id)
            then = JOB_RUNNING  # the job is marked running with its first run's start
        stored = self.run_state.queue(
            run.id, event, detail, job_id=run.job_id, then=then, state=state, **fields
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def told(fut: asyncio.Future[Any]) -> None:
            exc = fut.exception() if not fut.cancelled() else asyncio.CancelledError()
            if done.cancelled():  # the caller went away: as when its wait was cancelled
                return
            if exc is not None:
                done.set_exception(exc)
                return
            try:
                self._updated(run, state, fields)
            except Exception as err:  # noqa: BLE001 - the caller awaits it
                done.set_exception(err)
                return
            done.set_result(None)

        stored.add_done_callback(told)
        return done

    def _updated(self, run: Run, state: str, fields: dict[str, Any]) -> None:
        """After a state change was stored: the run object, the hooks, the viewers."""
        assert run.id is not None
        run.state = state
        for key, value in fields.items():
            setattr(run, key, value)
        if state == RunState.RUNNING:
            for hook in self.on_run_started:
                _call_hook(hook, run)
        self.publish_run(run, events.run_state(run.id, run.host, state))

    async def finish(
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
        """Record a run's end (and its job's, when it was the job's last open run)."""
        assert run.id is not None
        if out is not None:
            reason = out.mask(reason)  # an agent's refusal quotes the command it was sent
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
        if run.id in self.inflight.claimed or (
            self.cluster is not None and out is not None and out.lines
        ):
            # the job's own server reads the output (results, counts) once it sees the end;
            # the other servers' viewers get the notice of the last lines stored before it
            await self.writer.flush()
        open_runs = self.inflight.open_runs
        left = open_runs.get(run.job_id)
        last = False
        if left is not None and run.state not in RunState.FINAL:
            open_runs[run.job_id] = left - 1
            last = left == 1
        ended = await self.run_state.change(
            run.id, "finished", detail, job_id=run.job_id, then=JOB_END if last else "", **fields
        )
        run.state = state
        run.exit_code = exit_code
        self.publish_run(
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
            open_runs.pop(run.job_id, None)
            await self.job_finished(ended)

    async def conclude(
        self, run: Run, outcome: Outcome, out: RunOutput, stats: dict[str, Any] | None = None
    ) -> None:
        """Record how a run ended."""
        out.close()
        result = outcome.result
        reason = outcome.reason
        if result is None:
            await self.finish(run, outcome.state or RunState.FAILED, reason=reason, out=out)
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
        await self.finish(
            run,
            state,
            reason=reason,
            exit_code=result.exit_code,
            signal=result.signal,
            out=out,
            duration=outcome.duration,
            stats=stats,
            finished_at=outcome.ended_at,
            **extra,
        )

    def publish_run(self, run: Run, event: dict[str, Any]) -> None:
        """A run's state event, to the viewers of the run, of its job and of every run."""
        topics = f"run:{run.id}", f"job:{run.job_id}", f"jobstate:{run.job_id}", "runs"
        self.publish(event, topics)

    def publish(self, event: dict[str, Any], topics: tuple[str, ...]) -> None:
        """To this server's viewers, and to the other servers' (their consoles follow too)."""
        self.hub.publish(event, *topics)
        if self.cluster is not None:
            self.cluster.relay(event, topics)

    async def job_finished(self, job: Job) -> None:
        """Tell viewers and the finish hooks that a job reached its final state."""
        assert job.id is not None
        secretfile.drop(self.secrets_dir, job.id)  # nothing left to mask
        self.publish(events.job_state(job.id, job.state), (f"job:{job.id}", f"jobstate:{job.id}"))
        log.info("job %s %s", job.id, job.state, extra={"job": job.id, "state": job.state})
        for hook in self.on_job_finished:
            try:
                await hook(job)
            except Exception:
                log.exception("job %s: a finish hook failed", job.id)

    async def finish_job(self, job_id: int) -> None:
        """End a job whose runs all ended (if they did)."""
        done = await self.store.call(self.store.finish_job_if_done, job_id)
        if done is not None:
            await self.job_finished(done)

    async def job_event(self, job: Job, text: str) -> None:
        """Tell viewers of a job something that concerns all its runs."""
        log.info("job %s: %s", job.id, text)
        self.publish(events.job_notice(job.id, text), (f"job:{job.id}", f"jobstate:{job.id}"))


def _log_failure(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.warning("a run event could not be stored: %s", fut.exception())


def _call_hook(hook: Callable[[Run], None], run: Run) -> None:
    try:
        hook(run)
    except Exception:
        log.exception("run %s: a hook failed", run.id)
