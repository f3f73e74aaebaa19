"""A playbook job in flight: its batches, the `needs` DAG, `when`, runs placed, results for
`results.<task>`, loops over results expanded when they run, rows taken back after a restart.

Each run's attempts are in `playattempts.py`; a job is submitted or resumed by `playstart.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from easytask.errors import EasyTaskError
from easytask.facts import fact_vars, uses_facts
from easytask.plan import (
    PlannedTask,
    PlaybookPlan,
    RenderedAction,
    RunKey,
    TaskRun,
    evaluate_when,
    loop_result,
    render_action,
    stop_after_batch,
    task_result,
)
from easytask.plan.loops import item_run_name, run_items
from easytask.scheduler.engine import JobEngine
from easytask.scheduler.inflight import JobOptions
from easytask.scheduler.playattempts import Attempts
from easytask.scheduler.playrows import ANY_HOST, Slot, item_of, retry_due
from easytask.scheduler.renderthreads import off_loop
from easytask.store.models import Job, Run, RunState
from easytask.store.runs import CHANGED, IGNORED

log = logging.getLogger("easytask.server")

EMPTY_LOOP = "the loop gave no item"  # the reason of a loop's run on a host with no item
OK_FOR_NEEDS = (RunState.SUCCESS, RunState.SKIPPED)
LOST = (RunState.FAILED, RunState.TERMINATED)  # a loop over results whose items never came


def _prepare(task: PlannedTask, host: str, context: Mapping[str, Any]) -> RenderedAction | None:
    """The run's action rendered for its host, or None when its `when` is false."""
    if not evaluate_when(task, host, context):
        return None
    return render_action(task, host, context)


class PlaybookJob(Attempts):
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
        self.slots: dict[RunKey, Slot] = {
            planned.key: Slot(planned, run) for planned, run in zip(plan.runs, runs, strict=True)
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
        # after a restart: the latest row of each (run name, host), and the runs' marks, for
        # the items of a loop over results that the previous process had rendered
        self.stored: dict[tuple[str, str], Run] = {}
        self.marks: dict[int, set[str]] = {}

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
            # the items of loops over results were added while the batch ran
            batch = [s for s in self.slots.values() if s.planned.batch == index and not s.members]
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

    async def _guarded(self, slot: Slot) -> None:
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

    async def _skip(self, slot: Slot, reason: str) -> None:
        await self.engine.finish(slot.run, RunState.SKIPPED, reason=reason)
        slot.state = RunState.SKIPPED
        slot.result = task_result(rc=None, state=RunState.SKIPPED)
        slot.done.set()

    async def _one(self, slot: Slot) -> None:
        planned = slot.planned
        task = self.plan.task(planned.task)
        if slot.done.is_set():  # finished before a server restart
            return
        for need in planned.needs:
            await self.slots[need].done.wait()
            for key, dep in self._ended(need):
                if (dep.state not in OK_FOR_NEEDS and not dep.ignored) or (
                    dep.state == RunState.SKIPPED and not dep.skipped_by_when
                ):
                    await self._skip(
                        slot,
                        f"needs {key.task!r}"
                        + (f" on {key.host}" if key.host else "")
                        + f", which ended {dep.state}",
                    )
                    return
        if planned.empty_loop:  # skipped as a false `when` is: what waits for it goes on
            slot.skipped_by_when = True
            await self._skip(slot, EMPTY_LOOP)
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
        if planned.at_run and planned.item is None:
            await self._expand(slot, host, results, facts)
            return
        context = self.plan.context(host, results, facts, self.plan.item_vars(planned))
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

    def _ended(self, key: RunKey) -> list[tuple[RunKey, Slot]]:
        """The runs a planned run stands for: itself, or a loop over results' items."""
        slot = self.slots[key]
        if slot.members:
            return [(k, self.slots[k]) for k in slot.members]
        return [(key, slot)]

    def _results(self, planned: TaskRun) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, keys in planned.results_from.items():
            slots = [s for k in keys if k in self.slots for _, s in self._ended(k)]
            loop = self.plan.task(name).loop
            if loop is not None:  # every item's result, in item order
                items = [(s.planned.item, s.result) for s in slots if s.planned.item is not None]
                out[name] = loop_result(items, loop.loop_var)
                if any(s.planned.at_run and s.state in LOST for s in slots if not s.planned.item):
                    # its items could not be rendered: the task failed before any item
                    out[name].update(state=RunState.FAILED, failed=True, skipped=False)
            elif slots and slots[0].result is not None:
                out[name] = slots[0].result
        return out

    async def _expand(
        self, slot: Slot, host: str, results: Mapping[str, Any], facts: Mapping[str, Any]
    ) -> None:
        """Render a loop over results on its host now that its needs have ended, give its run
        the first item and queue a run for each other item (one transaction), then run the
        items in order. The rows a previous server process made for them are taken as they
        are: a loop is expanded once."""
        planned = slot.planned
        try:
            items = await off_loop(run_items, self.plan, planned.task, host, results, facts)
        except EasyTaskError as exc:
            reason = f"the loop's items: {exc}"
            await self.engine.finish(slot.run, RunState.FAILED, reason=reason)
            slot.state = RunState.FAILED
            slot.result = task_result(stderr=reason, rc=None, state=RunState.FAILED)
            return
        if not items and slot.run.task == planned.task:
            slot.skipped_by_when = True  # as a planned loop with no item: what waits goes on
            await self._skip(slot, EMPTY_LOOP)
            return
        names = [item_run_name(planned.task, i.shown) for i in items]
        rows: list[Run] | None = None
        if slot.run.task == planned.task:
            rows = await self.engine.store.call(
                self.engine.store.expand_run, slot.run.id or 0, planned.task, names
            )
        restarted = rows is None
        if rows is None:  # expanded before a server restart: its rows are stored
            found = [self.stored.get((name, slot.run.host)) for name in names]
            if not items or any(r is None for r in found):
                await self._lost_items(slot, planned.task)
                return
            rows = [r for r in found if r is not None]
        keys: list[RunKey] = []
        for item, row in zip(items, rows, strict=True):
            child = Slot(
                TaskRun(
                    task=planned.task,
                    host=planned.host,
                    candidates=planned.candidates,
                    batch=planned.batch,
                    needs=tuple(keys[-1:]),  # an item waits for the item before it
                    results_from=planned.results_from,
                    item=item,
                ),
                row,
            )
            self.slots[child.planned.key] = child
            keys.append(child.planned.key)
            if restarted:
                await self.restore(child)
            elif row is not slot.run:
                self.engine.track(row)
        slot.members = keys
        for key in keys:
            await self._guarded(self.slots[key])

    async def _lost_items(self, slot: Slot, task: str) -> None:
        """A restarted server rendered other items than the stored ones: end the loop there."""
        reason = "not resumed: the loop's items are not the ones rendered before the restart"
        for (name, host), row in self.stored.items():
            if host == slot.run.host and item_of(name, task) and row.state not in RunState.FINAL:
                await self.engine.finish(row, RunState.TERMINATED, reason=reason)
        if slot.run.state not in RunState.FINAL:
            await self.engine.finish(slot.run, RunState.TERMINATED, reason=reason)
        slot.state = RunState.TERMINATED
        slot.result = task_result(stderr=reason, rc=None, state=RunState.TERMINATED)

    async def restore(self, slot: Slot) -> int:
        """Take a run's stored row as a previous server process left it; returns 1 when it is
        still to run (resumed, or its next attempt queued), else 0 (it ended: its result kept)."""
        run = slot.run
        engine = self.engine
        task = self.plan.task(slot.planned.task)
        engine.track(run)
        if run.state not in RunState.FINAL:
            slot.resumed = run.attempt > 1 or run.state != RunState.QUEUED
            if slot.resumed:
                await engine.store.call(
                    engine.store.update_run, run.id or 0, "resumed", "by a restarted server"
                )
            return 1
        if retry_due(run, task):
            # The old process ended this attempt but died before queuing the next one.
            nxt = await engine.store.call(engine.store.add_attempt, run.id or 0, run.attempt + 1)
            engine.track(nxt)
            slot.run = nxt
            slot.resumed = True
            return 1
        slot.state = run.state
        slot.skipped_by_when = run.reason.startswith("when is false") or run.reason == EMPTY_LOOP
        slot.ignored = IGNORED in self.marks.get(run.id or 0, ())
        if run.state == RunState.SKIPPED:
            slot.result = task_result(rc=None, state=RunState.SKIPPED)
        else:
            stdout, stderr = await engine.output_text(run.id or 0)
            changed = CHANGED in self.marks.get(run.id or 0, ())
            slot.result = task_result(stdout, stderr, run.exit_code, run.state, changed=changed)
        slot.done.set()
        return 0
