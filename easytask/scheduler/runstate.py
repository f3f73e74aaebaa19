"""Run-state changes from every run in flight, written in one transaction per wake-up."""

from __future__ import annotations

import asyncio
from typing import Any

from easytask.store.db import Store
from easytask.store.models import Job
from easytask.store.runs import RunChange


class RunStateWriter:
    """Queues run changes; one task writes all that queued up meanwhile, in order.

    A fan-out to hundreds of hosts changes each run's state three times within a second or two;
    one transaction per change would keep the database thread busy for most of that time.
    Callers still wait for their change to be stored before they go on.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[tuple[RunChange, asyncio.Future[Job | None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def change(
        self,
        run_id: int,
        event: str | None = None,
        detail: str = "",
        *,
        job_id: int = 0,
        then: str = "",
        **fields: Any,
    ) -> Job | None:
        """Store a change of one run, after every change queued before it (KeyError: no run).
        With `then` (see RunChange), its job's change goes in the same transaction; returns the
        job if that ended it."""
        return await self.queue(run_id, event, detail, job_id=job_id, then=then, **fields)

    def queue(
        self,
        run_id: int,
        event: str | None = None,
        detail: str = "",
        *,
        job_id: int = 0,
        then: str = "",
        **fields: Any,
    ) -> asyncio.Future[Job | None]:
        """`change` without waiting: the change is queued now, in order; the future is done
        once it is stored (no task per change: a fan-out queues several for each of its runs)."""
        fut: asyncio.Future[Job | None] = asyncio.get_running_loop().create_future()
        self._queue.append((RunChange(run_id, event, detail, fields, job_id, then), fut))
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="run-state-writer")
        return fut

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    # through a database outage: retried until stored (a run that ended meanwhile
                    # records its end when the database is back)
                    results = await self.store.persist(
                        self.store.update_runs, [change for change, _ in batch]
                    )
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(batch, results, strict=True):
                    if fut.done():
                        continue
                    if isinstance(result, KeyError):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
        finally:
            self._task = None
