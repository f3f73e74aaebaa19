"""One task that stores log lines from every run in batches, one transaction per batch.

While the database is unavailable the batch in hand is retried with backoff (`Store.persist`)
and new lines wait in the buffer; producers stop reading from their runs once it holds
`limit_lines` lines or `limit_bytes` bytes (`over`, `wait_below`), so the agents keep the rest
in their spools and the server's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from easytask.errors import Unavailable
from easytask.store import outage
from easytask.store.db import Store
from easytask.store.lines import LogRow
from easytask.store.pglog import Fenced

log = logging.getLogger("easytask.server")
LIMIT_LINES = 50_000  # lines buffered before producers pause
LIMIT_BYTES = 16 << 20  # bytes buffered before producers pause (the `log_buffer` setting)


def buffer_limits(nbytes: int) -> dict[str, int]:
    """The buffer's limits for the `log_buffer` setting: that many bytes, and as many lines as
    64-byte lines would take (at least 1,000, at most `LIMIT_LINES`)."""
    nbytes = max(nbytes, 4096)
    return {"limit_bytes": nbytes, "limit_lines": max(1000, min(LIMIT_LINES, nbytes // 64))}


class LogWriter:
    """Buffers lines and writes them every `interval` seconds or `batch` lines."""

    def __init__(
        self,
        store: Store,
        batch: int = 2000,
        interval: float = 0.1,
        limit_lines: int = LIMIT_LINES,
        limit_bytes: int = LIMIT_BYTES,
    ) -> None:
        self.store = store
        self.limit_lines = limit_lines
        self.limit_bytes = limit_bytes
        self.stalled = False  # the last attempt to store a batch met a database fault
        self.batch = batch
        self.interval = interval
        self._rows: list[LogRow] = []
        self._rows_bytes = 0
        self._added = 0
        self._written = 0
        self._added_bytes = 0
        self._written_bytes = 0
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._fenced = False
        self.total_written = 0
        self.on_written: list[Callable[[list[LogRow]], None]] = []  # after each stored batch

    @property
    def backlog(self) -> int:
        """Lines accepted but not yet stored."""
        return self._added - self._written

    @property
    def backlog_bytes(self) -> int:
        """Text bytes accepted but not yet stored."""
        return self._added_bytes - self._written_bytes

    def fence(self) -> None:
        """Another server took over this one's runs (and re-read their output from the agents):
        drop what is buffered and store nothing more."""
        self._fenced = True
        self._added -= len(self._rows)
        self._added_bytes -= self._rows_bytes
        self._rows = []
        self._rows_bytes = 0

    def add(self, rows: list[LogRow], nbytes: int | None = None) -> None:
        """Queue lines for storage (never blocks); `nbytes` is their text's length if known."""
        if self._fenced:
            return
        if nbytes is None:
            nbytes = sum(len(row[5]) for row in rows)
        self._rows.extend(rows)
        self._rows_bytes += nbytes
        self._added += len(rows)
        self._added_bytes += nbytes
        if len(self._rows) >= self.batch:
            self._wake.set()

    def start(self) -> None:
        """Start the background writer task."""
        self._task = asyncio.create_task(self._loop(), name="log-writer")

    async def _loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self._write_pending()
            if self._closing and not self._rows:
                return

    async def _write_pending(self) -> None:
        while self._rows:
            rows, self._rows = self._rows, []
            nbytes, self._rows_bytes = self._rows_bytes, 0
            while True:
                try:
                    await self.store.persist(self.store.write_lines, rows, on_fault=self._stall)
                    break
                except Fenced as exc:
                    log.error("%d output lines not stored: %s", len(rows), exc)
                    self._fenced = True
                except Exception:
                    # Lines are never dropped: keep them and try again shortly.
                    log.exception("storing %d log lines failed; retrying", len(rows))
                    await asyncio.sleep(0.5)
                if self._fenced:  # another server took the runs over: it stores their lines
                    self._added -= len(rows)
                    self._added_bytes -= nbytes
                    self.fence()
                    return
            self.stalled = False
            self._written += len(rows)
            self._written_bytes += nbytes
            self.total_written += len(rows)
            for hook in self.on_written:
                try:
                    hook(rows)
                except Exception:
                    log.exception("a hook on stored lines failed")
            async with self._progress:
                self._progress.notify_all()

    async def _stall(self) -> None:
        """A batch met a database fault: impatient flushes give up (see `flush`)."""
        self.stalled = True
        async with self._progress:
            self._progress.notify_all()

    async def flush(self) -> None:
        """Return once every line added before this call is stored.

        The scheduler waits through a database outage; an API request (`outage.mark_impatient`)
        gets `Unavailable` instead of waiting for the database to come back."""
        target = self._added
        if self._written >= target:
            return
        impatient = outage.is_impatient()

        def done() -> bool:
            return self._written >= target or (impatient and self.stalled)

        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(done)
        if self._written < target:
            fault = self.store.health.fault or outage.UNREACHABLE
            raise Unavailable(
                f"the database is unavailable ({fault}); try again in {outage.RETRY_AFTER} s",
                retry_after=outage.RETRY_AFTER,
            )

    def over(self, lines: int | None = None, nbytes: int | None = None) -> bool:
        """True when the backlog is at or above either limit (by default the buffer's)."""
        lines = self.limit_lines if lines is None else lines
        nbytes = self.limit_bytes if nbytes is None else nbytes
        return self.backlog >= lines or self.backlog_bytes >= nbytes

    async def wait_below(self, lines: int | None = None, nbytes: int | None = None) -> None:
        """Wait until the backlog is below both limits (by default half the buffer's):
        backpressure for producers."""
        lines = self.limit_lines // 2 if lines is None else lines
        nbytes = self.limit_bytes // 2 if nbytes is None else nbytes
        if not self.over(lines, nbytes):
            return
        self._wake.set()
        async with self._progress:
            await self._progress.wait_for(lambda: not self.over(lines, nbytes))

    async def close(self) -> None:
        """Store what is left and stop."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
