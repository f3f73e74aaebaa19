"""Retention: delete runs (with their log lines and index rows) older than the settings allow.

On PostgreSQL a week whose runs are all past retention goes whole: its log partitions are
dropped rather than their rows deleted (`Store.prune_weeks`).

Successful runs go after `retention`, failed, terminated and unreachable ones after
`retention_failed` (the same age when unset). Runs still in flight are never touched, jobs go
when their last run goes, and the audit log is never pruned.

Files in the state dir go the same way: a fetched file (`fetched/RUN_ID/`) once its run row is
gone, an upload (`uploads/ID/`) and a submitted playbook's bundle (`bundles/ID/`) once no job
row refers to them any more; none younger than the shorter retention (a file in the making
has no row yet).

Agents' host samples, rolled up into minutes (easytask.scheduler.hostmetrics), go after the
longer of the two ages: they explain any run still kept.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
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
        state_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
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
        ages = [a for a in (ok_age, failed_age) if a is not None]
        minutes_before = (now - timedelta(seconds=max(ages))).timestamp() if ages else None
        if dry_run:
            counts = await store.call(store.prune_counts, ok_before, failed_before)
            # (the files of the runs counted are not old enough to count yet: they go with them)
            files = await self._sweep_files(min(ages), dry_run=True) if ages else 0
            minutes = 0
            if minutes_before is not None:
                minutes = await store.call(store.prune_host_rollups, minutes_before, True)
            return {**result, **counts, "files": files, "metric_minutes": minutes}
        # PostgreSQL first drops whole weeks of log partitions; the rest goes run by run
        weeks = await store.call(store.prune_weeks, ok_before, failed_before)
        total = {key: weeks[key] for key in ("jobs", "runs", "lines")}
        while ok_before is not None or failed_before is not None:
            done = await store.call(store.prune_batch, ok_before, failed_before, BATCH)
            for key in total:
                total[key] += done[key]
            if done["runs"] < BATCH:
                break
        files = await self._sweep_files(min(ages)) if ages else 0
        minutes = 0
        if minutes_before is not None:
            minutes = await store.call(store.prune_host_rollups, minutes_before)
        return {**result, **total, "files": files, "metric_minutes": minutes}

    async def _sweep_files(self, age: float, dry_run: bool = False) -> int:
        """Remove (or count) the state dir's files older than `age` whose run or job is gone."""
        if self.state_dir is None:
            return 0
        old = await asyncio.to_thread(_entries_older_than, self.state_dir, time.time() - age)
        run_ids = [int(name) for kind, name, _ in old if kind == "fetched"]
        needles = [_needle(kind, name) for kind, name, _ in old if kind != "fetched"]
        if not old:
            return 0
        runs, held = await self.store.call(self.store.file_refs, run_ids, needles)
        gone = [
            path
            for kind, name, path in old
            if (int(name) not in runs if kind == "fetched" else _needle(kind, name) not in held)
        ]
        if not dry_run:
            await asyncio.to_thread(_remove, gone)
        return len(gone)

    def start(self) -> None:
        """Prune periodically when a retention is set."""
        if self.retention is None and self.retention_failed is None:
            return
        self._task = asyncio.create_task(self._loop(), name="retention")

    async def _loop(self) -> None:
        while True:
            try:
                result = await self.prune()
                if result["runs"] or result["files"] or result["metric_minutes"]:
                    log.info(
                        "retention: deleted %d job(s), %d run(s), %d log line(s), %d file(s), "
                        "%d minute(s) of host samples",
                        result["jobs"],
                        result["runs"],
                        result["lines"],
                        result["files"],
                        result["metric_minutes"],
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


# What a job's `vars` holds for each kind of kept files: an upload's id (as a JSON string), a
# bundle's directory (in the playbook's path).
def _needle(kind: str, name: str) -> str:
    return f'"{name}"' if kind == "uploads" else f"/bundles/{name}/"


def _entries_older_than(state_dir: Path, before: float) -> list[tuple[str, str, Path]]:
    """(kind, name, path) of each fetched run dir, upload and bundle last changed before."""
    found = []
    for kind in ("fetched", "uploads", "bundles"):
        try:
            entries = list((state_dir / kind).iterdir())
        except OSError:
            continue
        for entry in entries:
            if kind == "fetched" and not entry.name.isdigit():
                continue
            try:
                if entry.is_symlink() or entry.lstat().st_mtime >= before:
                    continue
            except OSError:
                continue
            found.append((kind, entry.name, entry))
    return found


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
