"""Retention: delete runs (with their log lines and index rows) older than the settings allow.

Successful runs go after `retention`, failed, terminated and unreachable ones after
`retention_failed` (the same age when unset). Runs still in flight are never touched, jobs go
when their last run goes, and the audit log is never pruned.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from easytask.store.db import Store

log = logging.getLogger("easytask.server")

BATCH = 100  # runs per transaction: the database thread is free between batches


class Retention:
    """Prunes on demand and, when ages are set, every `interval` seconds in the background."""

    def __init__(
        self,
        store: Store,
        retention: float | None,
        retention_failed: float | None,
        interval: float = 3600.0,
    ) -> None:
        self.store = store
        self.retention = retention
        self.retention_failed = retention_failed
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def ages(
        self, retention: float | None = None, retention_failed: float | None = None
    ) -> tuple[float | None, float | None]:
        """(age for successful runs, age for failed runs) in seconds; None keeps them."""
        ok = retention if retention is not None else self.retention
        failed = retention_failed if retention_failed is not None else self.retention_failed
        if failed is None:
            failed = ok
        return ok, failed

    async def prune(
        self,
        *,
        dry_run: bool = False,
        retention: float | None = None,
        retention_failed: float | None = None,
    ) -> dict[str, Any]:
        """Delete (or with dry_run count) what is past retention; the counts and ages used."""
        ok_age, failed_age = self.ages(retention, retention_failed)
        now = datetime.now(UTC)
        ok_before = now - timedelta(seconds=ok_age) if ok_age is not None else None
        failed_before = now - timedelta(seconds=failed_age) if failed_age is not None else None
        result: dict[str, Any] = {
            "dry_run": dry_run,
            "retention": ok_age,
            "retention_failed": failed_age,
        }
        store = self.store
        if dry_run:
            counts = await store.call(store.prune_counts, ok_before, failed_before)
            return {**result, **counts}
        total = {"jobs": 0, "runs": 0, "lines": 0}
        while ok_before is not None or failed_before is not None:
            done = await store.call(store.prune_batch, ok_before, failed_before, BATCH)
            for key in total:
                total[key] += done[key]
            if done["runs"] < BATCH:
                break
        return {**result, **total}

    def start(self) -> None:
        """Prune periodically when a retention is set."""
        if self.retention is None and self.retention_failed is None:
            return
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def _loop(self) -> None:
        while True:
            try:
                result = await self.prune()
                if result["runs"]:
                    log.info(
                        "retention: deleted %d job(s), %d run(s), %d log line(s)",
                        result["jobs"],
                        result["runs"],
                        result["lines"],
                    )
                    await self.store.call(self.store.audit, "server", "prune", "retention", result)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention: prune failed; trying again next time")
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Stop the periodic prune."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
