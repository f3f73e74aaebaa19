"""The audit chain's checkpoints: signed and written outside the database as the chain grows,
at start and at shutdown (and POSTed to a webhook if one is set), and checked with the chain by
`verify`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from easytask import __version__
from easytask.scheduler.egress import url_origin
from easytask.store.audit import ChainPoint
from easytask.store.checkpoints import Checkpoint, CheckpointLog
from easytask.store.db import Store

log = logging.getLogger("easytask.server")
FIRST_WALK_WAIT = 1.0  # seconds the audit page waits for this process's first walk of the chain


def _now() -> str:
    """The time now as the console shows times (UTC)."""
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _public(result: dict[str, Any]) -> dict[str, Any]:
    """A walk's result as the API gives it (without where the walk got to)."""
    return {k: v for k, v in result.items() if k != "point"}


class CheckpointWebhook:
    """POSTs each signed checkpoint line, as written to the file, to a URL: one background task
    works through a bounded queue, retrying a failed POST with exponential backoff, so the
    server never waits for the receiver. When the queue is full the oldest checkpoint is
    dropped (the file keeps it; the next one covers the chain up to a later head)."""

    def __init__(
        self,
        url: str,
        *,
        attempts: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        timeout: float = 10.0,
        queue: int = 100,
    ) -> None:
        self.url = url
        self.where = url_origin(url)
        self.attempts = attempts
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue)
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self.sent = 0
        self.failed = 0

    def start(self) -> None:
        """Start the sending task (in the running loop)."""
        if self._task is None:
            self._client = httpx.AsyncClient(
                timeout=self.timeout,
                follow_redirects=False,
                headers={"user-agent": f"EasyTask/{__version__}"},
            )
            self._task = asyncio.create_task(self._run(), name="audit-checkpoint-webhook")

    def send(self, line: str) -> None:
        """Queue one signed checkpoint line (returns at once)."""
        if self._queue.full():
            self._queue.get_nowait()
            self._queue.task_done()
            self.failed += 1
            log.warning(
                "audit checkpoint webhook %s: queue full, oldest checkpoint dropped", self.where
            )
        self._queue.put_nowait(line)

    async def _run(self) -> None:
        while True:
            line = await self._queue.get()
            try:
                await self._deliver(line)
            except Exception as exc:  # the sender outlives any one checkpoint
                self.failed += 1
                # the class only, as for HTTP errors: a message may quote the URL
                log.error("audit checkpoint webhook %s: %s", self.where, type(exc).__name__)
            finally:
                self._queue.task_done()

    async def _deliver(self, line: str) -> None:
        assert self._client is not None
        headers = {"content-type": "application/json", "X-EasyTask-Event": "audit.checkpoint"}
        for attempt in range(1, self.attempts + 1):
            try:
                resp = await self._client.post(self.url, content=line.encode(), headers=headers)
                problem = "" if 200 <= resp.status_code < 300 else f"HTTP {resp.status_code}"
            except httpx.HTTPError as exc:
                # the exception's class only: its text may quote the URL
                problem = type(exc).__name__
            if not problem:
                self.sent += 1
                return
            if attempt == self.attempts:
                break
            delay = min(self.backoff * 2 ** (attempt - 1), self.max_backoff)
            log.warning(
                "audit checkpoint webhook %s failed (%s, attempt %d of %d); retry in %gs",
                self.where,
                problem,
                attempt,
                self.attempts,
                delay,
            )
            await asyncio.sleep(delay)
        self.failed += 1
        log.error(
            "audit checkpoint webhook %s failed %d times; this checkpoint is in the file only",
            self.where,
            self.attempts,
        )

    async def close(self, grace: float = 5.0) -> None:
        """Give queued checkpoints a moment to go out, then stop."""
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._queue.join()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        if self._client is not None:
            await self._client.aclose()


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
        webhook: CheckpointWebhook | None = None,
    ) -> None:
        self.store = store
        self.checkpoints = checkpoints
        self.webhook = webhook
        self.every = every
        self.interval = interval
        self.poll = poll
        self._last: tuple[int, str] | None = None
        self._last_at = 0.0
        self._plain_until: int | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        # what the last walk of the chain found (see `status`), kept per process
        self._verify_lock = asyncio.Lock()
        self._whole_lock = asyncio.Lock()
        self._whole_task: asyncio.Task[None] | None = None
        self._result: dict[str, Any] | None = None
        self._point: ChainPoint | None = None
        self._at = ""
        self._whole_at = ""
        self._breaks = 0  # breaks found by the audit page's checks of what is new
        self._good: list[Checkpoint] = []
        self._problems: list[str] = []
        self._offset = 0
        self._line = 0

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
            if self.webhook is not None:
                self.webhook.send(line)
            return {"head_id": head_id, "head_hash": head_hash, "count": count, "at": at}

    async def verify(self) -> dict[str, Any]:
        """The whole chain checked with its key, then against every signed checkpoint (the file
        read again from its start); a checkpoint whose signature fails is reported. What it
        finds is kept for `status`."""
        async with self._whole_lock:
            started = _now()
            breaks = self._breaks
            good, problems, offset, line = await asyncio.to_thread(
                self.checkpoints.read_from, 0, 0, partial=True
            )
            result = await self._walk(good, problems, None)
            async with self._verify_lock:
                if result["ok"] and self._breaks != breaks and self._result is not None:
                    # a page found a break while this walk read rows it had passed already:
                    # the break stands until a walk begun after it finds the chain intact
                    return _public(self._result)
                self._whole_at = started
                self._keep(result, good, problems, offset, line)
            return _public(result)

    def verify_in_background(self) -> None:
        """Start a walk of the whole chain (`verify`) unless one is under way."""
        if self._whole_task is None or self._whole_task.done():
            self._whole_task = asyncio.create_task(self._verify_quietly(), name="audit-verify")

    @property
    def verifying(self) -> bool:
        """Whether a walk of the whole chain is under way."""
        return self._whole_task is not None and not self._whole_task.done()

    async def status(self) -> dict[str, Any]:
        """The chain's state for the audit page, cheap however long the chain: the rows added
        since the last walk are checked from where it ended (see `easytask.store.audit.verify`);
        until this process has walked the whole chain once, `pending`. A break, once found, is
        reported until a walk of the whole chain finds the chain intact. The first call waits up to
        FIRST_WALK_WAIT seconds for the first walk."""
        if self._result is None:
            self.verify_in_background()
            task = self._whole_task
            assert task is not None
            # a short chain is walked at once: wait that long rather than show `pending`
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), FIRST_WALK_WAIT)
        async with self._verify_lock:
            if self._result is None:
                return {"pending": True, "verifying": True}
            if self._result["ok"] and self._point is not None:
                try:
                    size = self.checkpoints.path.stat().st_size
                except FileNotFoundError:
                    size = -1
                if size < self._offset:
                    # the file shrank or went: read what it holds now, from its start
                    good, problems, offset, line = await asyncio.to_thread(
                        self.checkpoints.read_from, 0, 0
                    )
                else:
                    more, new, offset, line = await asyncio.to_thread(
                        self.checkpoints.read_from, self._offset, self._line
                    )
                    good, problems = self._good + more, self._problems + new
                result = await self._walk(good, problems, self._point)
                if not result["ok"]:
                    self._breaks += 1
                self._keep(result, good, problems, offset, line)
            return {
                **_public(self._result),
                "upto": self._point.last_id if self._point is not None else None,
                "verified_at": self._at,
                "whole_at": self._whole_at,
                "verifying": self.verifying,
            }

    async def _walk(
        self, good: list[Checkpoint], problems: list[str], since: ChainPoint | None
    ) -> dict[str, Any]:
        if not good and not problems:
            # the server writes one as it starts: none means the file was deleted
            problems = [
                f"{self.checkpoints.path.name}: no checkpoint (the file was deleted?): rows "
                "deleted from the end of the chain cannot be told"
            ]
        # a walk of the whole chain reads every event: on a thread of its own, so the database
        # thread's other calls do not wait for it; one from a point is short
        call = self.store.call if since is not None else self.store.call_aside
        result = await call(self.store.audit_verify, good, since)
        if result["ok"] and problems:
            result = {
                "ok": False,
                "rows": result["rows"],
                "problem": "; ".join(problems),
                "point": result["point"],
            }
        return result

    def _keep(
        self,
        result: dict[str, Any],
        good: list[Checkpoint],
        problems: list[str],
        offset: int,
        line: int,
    ) -> None:
        self._result, self._at = result, _now()
        self._point = result.get("point") if result["ok"] else None
        self._good, self._problems, self._offset, self._line = good, problems, offset, line

    async def _verify_quietly(self) -> None:
        try:
            await self.verify()
        except Exception:
            log.exception("audit chain verification failed")

    async def start(self) -> None:
        """Checkpoint now (a server starting anchors the chain it found), then in the background."""
        if self.webhook is not None:
            self.webhook.start()
        await self.checkpoint(force=True)
        self._task = asyncio.create_task(self._loop(), name="audit-checkpoints")
        self.verify_in_background()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.checkpoint()
            except Exception:
                log.exception("audit checkpoint failed")

    async def close(self) -> None:
        """Stop the loop and any walk of the chain, and write a last checkpoint."""
        if self._whole_task is not None:
            self._whole_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._whole_task
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.checkpoint(force=True)
        except Exception:
            log.exception("audit checkpoint at shutdown failed")
        if self.webhook is not None:
            await self.webhook.close()
