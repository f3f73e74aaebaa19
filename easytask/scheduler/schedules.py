"""Schedules: playbooks with a `schedule:` fire at their cron times, once, across servers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from easytask.cron import Cron
from easytask.errors import EasyTaskError, Unavailable
from easytask.playbook import load_playbook
from easytask.store.db import Store
from easytask.store.models import Schedule, as_utc
from easytask.vault import Vault

log = logging.getLogger("easytask.server")

Clock = Callable[[], datetime]
# Starts the playbook at `path` for a schedule; returns the job id.
Submit = Callable[[Path, str], Awaitable[int]]
# Starts what a schedule stored in the database runs; returns the job id.
SubmitStored = Callable[[Schedule], Awaitable[int]]
ON_TIME = timedelta(minutes=2)  # a fire this late still counts as on time, not as a catch-up


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


class Scheduler:
    """Reads schedules from the playbooks dir and fires them with those stored in the database
    (through the API); the store decides who fires."""

    def __init__(
        self,
        store: Store,
        playbooks_dir: Path | None,
        submit: Submit,
        server_id: str,
        clock: Clock = utc_now,
        interval: float = 1.0,
        vault: Vault | None = None,
        submit_stored: SubmitStored | None = None,
    ) -> None:
        self.store = store
        self.vault = vault  # opens the playbooks' vaulted vars_files
        self.playbooks_dir = playbooks_dir
        self.submit = submit
        self.submit_stored = submit_stored
        self.server_id = server_id
        self.clock = clock
        self.interval = interval
        self.errors: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def sync(self) -> list[Schedule]:
        """Create or refresh a schedule for every playbook that has a `schedule:`."""
        rows: list[Schedule] = []
        if self.playbooks_dir is None or not self.playbooks_dir.is_dir():
            return rows
        for path in sorted(self.playbooks_dir.glob("*.y*ml")):
            try:
                book = await asyncio.to_thread(load_playbook, path, self.vault)
            except EasyTaskError as exc:
                if self.errors.get(str(path)) != str(exc):
                    log.warning("schedules: %s", exc)
                self.errors[str(path)] = str(exc)
                continue
            self.errors.pop(str(path), None)
            if book.schedule is None:
                continue
            rows.append(
                await self.store.call(
                    self.store.upsert_schedule,
                    book.name,
                    str(path.resolve()),
                    book.schedule.text,
                    book.tz or "UTC",
                    book.catch_up,
                )
            )
        return rows

    async def tick(self) -> list[int]:
        """Fire every enabled schedule that is due; returns the jobs started."""
        now = self.clock()
        started = []
        for row in await self.store.call(self.store.list_schedules):
            if not row.enabled:
                continue
            try:
                job = await self._maybe_fire(row, now)
            except EasyTaskError as exc:  # refused (a `notify:` URL not allowed, …): say why
                log.error("schedule %s did not fire: %s", row.name, exc)
                continue
            except Exception:
                log.exception("schedule %s failed to fire", row.name)
                continue
            if job is not None:
                started.append(job)
        return started

    async def _maybe_fire(self, row: Schedule, now: datetime) -> int | None:
        cron = Cron.parse(row.cron)
        tz = ZoneInfo(row.tz)
        next_fire = as_utc(row.next_fire)
        if next_fire is None:
            nxt = cron.next_after(now.astimezone(tz), tz).astimezone(UTC)
            await self.store.call(self.store.update_schedule, row.name, next_fire=nxt)
            return None
        if next_fire > now:
            return None
        # Due. Find the latest fire time that is not in the future.
        due = next_fire
        missed = 0
        while True:
            following = cron.next_after(due.astimezone(tz), tz).astimezone(UTC)
            if following > now:
                break
            due = following
            missed += 1
        late = now - due > ON_TIME
        nxt = cron.next_after(due.astimezone(tz), tz).astimezone(UTC)
        if (missed or late) and row.catch_up == "none":
            log.info(
                "schedule %s: skipping %d missed fire time(s) (catch_up: none)",
                row.name,
                missed + 1,
            )
            await self.store.call(self.store.update_schedule, row.name, next_fire=nxt)
            return None
        assert row.id is not None
        claimed = await self.store.call(self.store.claim_fire, row.id, due, self.server_id)
        await self.store.call(self.store.update_schedule, row.name, next_fire=nxt)
        if not claimed:
            return None  # another server fired it
        if row.origin == "db":
            if self.submit_stored is None:
                return None
            job_id = await self.submit_stored(row)
        else:
            job_id = await self.submit(Path(row.path), row.name)
        await self.store.call(self.store.set_fire_job, row.id, due, job_id)
        await self.store.call(self.store.update_schedule, row.name, last_fire=due, last_job=job_id)
        log.info("schedule %s fired for %s: job %d", row.name, due.isoformat(), job_id)
        return job_id

    def start(self) -> None:
        """Run sync and tick in the background."""
        self._task = asyncio.create_task(self._loop(), name="schedules")

    async def _loop(self) -> None:
        last_sync = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                if loop.time() - last_sync > 30:
                    await self.sync()
                    last_sync = loop.time()
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Unavailable:
                pass  # the database is away: its outage is logged once; fire times wait
            except Exception:
                log.exception("schedule loop error")
            await asyncio.sleep(self.interval)

    async def close(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
