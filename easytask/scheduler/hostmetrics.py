"""Host samples on their way in: one collector per agent link, one batched writer, the rollup.

Each admitted link gets a collector that keeps one `metrics` request open on the agent's
control session: the agent answers when a batch is due (see easytask.agent.hostmetrics), the
collector checks the batch (easytask.hostsample), hands it to the writer and waits until it is
stored; its next request names the newest sample stored, so the agent drops what came before.
A link that drops loses nothing: its agent keeps the unacknowledged samples and the next link's
collector asks for all of them (one stored already is kept once: its time is its key).

The writer stores what every collector handed it in one transaction every `flush_interval`; the
rollup folds raw samples older than `raw_retention` into minutes every `rollup_interval`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from easytask.hostsample import BadSamples, check_batch
from easytask.store.db import Store
from easytask.transport.agentlink import AgentLink

log = logging.getLogger("easytask.server")

HOLD = 30.0  # seconds an agent may hold a `metrics` request before answering (even with none)
RETRY = 5.0  # seconds before asking again after a request failed on a live link


class HostMetrics:
    """Collects agents' host samples, writes them in batches and rolls them up."""

    def __init__(
        self,
        store: Store,
        raw_retention: float = 86400.0,
        flush_interval: float = 0.5,
        rollup_interval: float = 60.0,
        hold: float = HOLD,
    ) -> None:
        self.store = store
        self.raw_retention = raw_retention
        self.flush_interval = flush_interval
        self.rollup_interval = rollup_interval
        self.hold = hold
        self.stored = 0  # samples written by this process (duplicates included)
        self.writes = 0  # transactions
        self._collectors: dict[str, asyncio.Task[None]] = {}
        self._pending: list[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = []
        self._kick = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the writer and the rollup."""
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="hostmetrics-writer"),
            asyncio.create_task(self._rollup_loop(), name="hostmetrics-rollup"),
        ]

    def follow(self, name: str, link: AgentLink | None) -> None:
        """Collect an agent's samples over its (new) link; a collector of its old link stops."""
        old = self._collectors.pop(name, None)
        if old is not None:
            old.cancel()
        if link is None:
            return
        task = asyncio.create_task(self._collect(name, link), name=f"hostmetrics-{name}")
        self._collectors[name] = task
        task.add_done_callback(lambda t: self._forget(name, t))

    def _forget(self, name: str, task: asyncio.Task[None]) -> None:
        if self._collectors.get(name) is task:
            del self._collectors[name]
        if not task.cancelled() and task.exception() is not None:
            log.warning("agent %s: host samples: %s", name, task.exception())

    async def _collect(self, name: str, link: AgentLink) -> None:
        after = 0.0  # the agent sends all it holds: those stored already are kept once
        while not link.conn.is_closed():
            try:
                reply = await link.request(
                    "metrics", timeout=self.hold + 15, after=after, wait=self.hold
                )
            except RuntimeError as exc:  # refused: an agent from before host samples
                log.info("agent %s sends no host samples: %s", name, exc)
                return
            except (asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                if link.conn.is_closed():
                    return
                log.info("agent %s: asking for host samples failed: %s", name, exc)
                await asyncio.sleep(RETRY)
                continue
            if reply.get("disabled"):
                return
            try:
                samples = check_batch(reply, time.time())
            except BadSamples as exc:
                log.warning("agent %s: host samples refused, none stored: %s", name, exc)
                return
            if samples:
                rows = [(name, t, *values) for t, values in samples]
                try:
                    await self.write(rows)
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # not acknowledged: the agent sends them again
                    log.warning("agent %s: storing host samples failed: %s", name, exc)
                    await asyncio.sleep(RETRY)
                    continue
                after = max(after, max(t for t, _ in samples))

    async def write(self, rows: list[tuple[Any, ...]]) -> None:
        """Store rows (agent, t, *FIELDS) with the next batch; returns once they are stored."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((rows, fut))
        self._kick.set()
        await fut

    async def _write_loop(self) -> None:
        while True:
            await self._kick.wait()
            await asyncio.sleep(self.flush_interval)  # what comes meanwhile goes along
            self._kick.clear()
            batch, self._pending = self._pending, []
            rows = [row for part, _ in batch for row in part]
            try:
                await self.store.call(self.store.write_host_samples, rows)
            except Exception as exc:
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.stored += len(rows)
            self.writes += 1
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    async def rollup(self, now: float | None = None) -> int:
        """Fold the raw samples past the raw retention into minutes; how many were folded."""
        before = (now if now is not None else time.time()) - self.raw_retention
        return await self.store.call(self.store.rollup_host_samples, before)

    async def _rollup_loop(self) -> None:
        while True:
            try:
                folded = await self.rollup()
                if folded:
                    log.info("host samples: %d rolled up into minutes", folded)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("host samples: rollup failed; trying again next time")
            await asyncio.sleep(self.rollup_interval)

    async def close(self) -> None:
        """Stop collecting; what was handed to the writer is stored first (briefly)."""
        for task in list(self._collectors.values()):
            task.cancel()
        await asyncio.gather(*self._collectors.values(), return_exceptions=True)
        if self._pending:
            rows = [row for part, _ in self._pending for row in part]
            self._pending = []
            try:
                await self.store.call(self.store.write_host_samples, rows)
            except Exception as exc:
                log.warning("host samples: %d not stored at stop: %s", len(rows), exc)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
