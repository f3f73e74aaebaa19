"""The audit chain's checkpoints: signed and written outside the database as the chain grows,
at start and at shutdown, and checked with the chain by `verify`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

from easytask.store.checkpoints import CheckpointLog
from easytask.store.db import Store

log = logging.getLogger("easytask.server")


class AuditAnchor:
    """Writes a checkpoint when `every` events were added or, if any were, `interval` seconds
    passed since the last one (the head is looked at every `poll` seconds)."""

    def __init__(
        self,
        store: Store,
        checkpoints: CheckpointLog,
        *,
        every: int = 100,
        interval: float = 300.0,
        poll: float = 5.0,
    ) -> None:
        self.store = store
        self.checkpoints = checkpoints
        self.every = every
        self.interval = interval
        self.poll = poll
        self._last: tuple[int, str] | None = None
        self._last_at = 0.0
        self._plain_until: int | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def checkpoint(self, *, force: bool = False) -> dict[str, Any] | None:
        """Sign and write a checkpoint of the chain's head unless it did not move; what was
        written (None when nothing was)."""
        async with self._lock:
            head_id, head_hash = await self.store.call(self.store.audit_head)
            if (head_id, head_hash) == self._last:
                return None
            if not force and self._last is not None:
                moved = head_id - self._last[0]
                if moved < self.every and time.monotonic() - self._last_at < self.interval:
                    return None
            # rows written from now on are keyed: the last plain one, once found, stays it
            count, plain = await self.store.call(self.store.audit_tally, head_id, self._plain_until)
            at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            line = await asyncio.to_thread(
                self.checkpoints.append, head_id, head_hash, count, plain, at
            )
            self._plain_until = plain
            self._last, self._last_at = (head_id, head_hash), time.monotonic()
            log.info("audit checkpoint: %s", line)
            return {"head_id": head_id, "head_hash": head_hash, "count": count, "at": at}

    async def verify(self) -> dict[str, Any]:
        """The chain checked with its key, then against every signed checkpoint; a checkpoint
        whose signature fails is reported."""
        good, problems = await asyncio.to_thread(self.checkpoints.read)
        if not good and not problems:
            # the server writes one as it starts: none means the file was deleted
            problems.append(
                f"{self.checkpoints.path.name}: no checkpoint (the file was deleted?): rows "
                "deleted from the end of the chain cannot be told"
            )
        result = await self.store.call(self.store.audit_verify, good)
        if result["ok"] and problems:
            result = {"ok": False, "rows": result["rows"], "problem": "; ".join(problems)}
        return result

    async def start(self) -> None:
        """Checkpoint now (a server starting anchors the chain it found), then in the background."""
        await self.checkpoint(force=True)
        self._task = asyncio.create_task(self._loop(), name="audit-checkpoints")

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("audit checkpoint failed")

    async def close(self) -> None:
        """Stop the loop and write a last checkpoint."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.checkpoint(force=True)
        except Exception:
            log.exception("audit checkpoint at shutdown failed")
