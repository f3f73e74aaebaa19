"""When the database does not answer: what kind of fault it is, and since when.

`Store.call` asks `fault_of` about every error a store method raises: a fault (PostgreSQL gone
or restarting, a full or failing disk under SQLite) becomes `Unavailable` (503 with
`Retry-After` in the API) and is noted in the store's `Health`; any other error is raised as it
is.  `Store.persist` retries a call through faults with backoff until it is stored (the log
writer and the run-state writer use it: output and run ends wait, they are never dropped).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import time
from contextvars import ContextVar

log = logging.getLogger("easytask.server")

UNREACHABLE = "unreachable"
DISK_FULL = "disk full"
DISK_ERROR = "disk error"
RETRY_AFTER = 5  # seconds a client is told to wait before it asks again
BACKOFF_FIRST = 0.2
BACKOFF_MAX = 5.0

# The task answering an HTTP request (see `mark_impatient`): its waits on the database (a flush
# of buffered output) give up with `Unavailable` during an outage instead of waiting for it to
# end.  A task it starts (a job's runs) inherits the variable but is another task: it waits.
_impatient: ContextVar[object | None] = ContextVar("impatient", default=None)


def mark_impatient() -> None:
    """The current task answers a request: it is told 503 rather than made to wait out an
    outage."""
    _impatient.set(asyncio.current_task())


def is_impatient() -> bool:
    """The current task answers a request (`mark_impatient`)."""
    task = _impatient.get()
    return task is not None and task is asyncio.current_task()


_DISK_FULL_TEXTS = (
    "database or disk is full",
    "no space left",
    "could not extend file",
    "disk full",
)


def _chain(exc: BaseException) -> list[BaseException]:
    """The error, what it wraps (SQLAlchemy's `orig`) and what caused it."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < 10:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        todo += [getattr(item, "orig", None), item.__cause__, item.__context__]
    return seen


def fault_of(exc: BaseException) -> str | None:
    """The kind of database fault an error shows (None: not a fault, a real error)."""
    from sqlalchemy import exc as sa

    chain = _chain(exc)
    text = " ".join(str(e) for e in chain).lower()
    if any(t in text for t in _DISK_FULL_TEXTS):
        return DISK_FULL
    for item in chain:
        if isinstance(item, OSError) and item.errno == errno.ENOSPC:
            return DISK_FULL
        if isinstance(item, sa.DisconnectionError):
            return UNREACHABLE
        if isinstance(item, sa.DBAPIError) and item.connection_invalidated:
            return UNREACHABLE
        if isinstance(item, sqlite3.OperationalError):
            message = str(item).lower()
            if "disk i/o error" in message:
                return DISK_ERROR
            if "unable to open database file" in message:
                return UNREACHABLE
            return None  # locked, a bad statement: not an outage
        if _psycopg_fault(item):
            return UNREACHABLE
    return None


def _psycopg_fault(item: BaseException) -> bool:
    """A psycopg error that means the connection or the server is gone (or going)."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - a SQLite-only install
        return False
    return isinstance(item, (psycopg.OperationalError, psycopg.InterfaceError))


class Health:
    """The database's state as the store last saw it: answering, or which fault since when.

    A fault is cleared by the next call that succeeds, except a full or failing disk, which
    only a stored write clears (SQLite still answers reads then)."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.fault: str | None = None
        self.since = 0.0
        self.failures = 0

    def failed(self, fault: str, exc: BaseException) -> None:
        """A call failed with a fault."""
        self.failures += 1
        if self.fault != fault:
            log.warning(
                "the database (%s) is unavailable: %s (%s: %s); output waits in a bounded "
                "buffer and the API answers 503 until it is back",
                self.where,
                fault,
                type(exc).__name__,
                str(exc).strip().splitlines()[0][:300] if str(exc).strip() else "",
            )
            if self.fault is None:
                self.since = time.monotonic()
            self.fault = fault

    def answered(self, wrote: bool) -> None:
        """A call succeeded; `wrote`: it stored something."""
        if self.fault is None or (self.fault != UNREACHABLE and not wrote):
            return
        log.warning(
            "the database (%s) answers again after %.1f s (%s); %d call(s) failed meanwhile",
            self.where,
            time.monotonic() - self.since,
            self.fault,
            self.failures,
        )
        self.fault = None
        self.failures = 0

    def problem(self) -> str | None:
        """What /readyz says about the database (None: nothing known wrong)."""
        if self.fault is None:
            return None
        return f"unavailable: {self.fault} for {time.monotonic() - self.since:.0f} s"
