"""Engine and the Store: every query, run on one dedicated database thread.

The Store's queries live in its parts: jobs and runs in `runs.py`, listing, searching and
pruning them in `history.py`, schedules in `timetable.py`, the audit chain in `audit.py`, log
lines in `lines.py`, sign-in attempts in `logins.py`, agents, users and tokens in
`identities.py`; sealed credentials in `credentials.py`; job templates and approvals in `templates.py`; the statements on the path a waiting client is on in `statements.py`.  What servers sharing the database record about each
other is in `servers.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlmodel import SQLModel, create_engine, select

from easytask.errors import Unavailable
from easytask.store import outage, schema
from easytask.store.audit import AuditQueries
from easytask.store.credentials import CredentialQueries
from easytask.store.history import HistoryQueries
from easytask.store.identities import IdentityQueries
from easytask.store.lines import LineQueries
from easytask.store.logins import LoginQueries
from easytask.store.metrics import MetricQueries
from easytask.store.runs import RunQueries
from easytask.store.templates import TemplateQueries
from easytask.store.timeline import TimelineQueries
from easytask.store.timetable import ScheduleQueries

T = TypeVar("T")
PING_AFTER_IDLE = 5.0  # seconds a PostgreSQL connection rests in the pool before it is checked
M = TypeVar("M", bound=SQLModel)
CONNECT_TIMEOUT = 5  # seconds to open a PostgreSQL connection


def sqlite_url(path: Path) -> str:
    """The SQLAlchemy URL of a SQLite file."""
    return f"sqlite:///{path}"


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a `--db` value: `postgresql://` and `postgres://` use psycopg 3."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def is_postgres(url: str) -> bool:
    """The URL names a PostgreSQL database."""
    return engine_url(url).startswith("postgresql")


def safe_url(url: str) -> str:
    """The URL without its password, for messages and logs."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1]


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL mode and a busy timeout, PostgreSQL talks UTC."""
    url = engine_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql"):
        # a PostgreSQL that cannot be reached fails a call within seconds, it does not hang it
        engine = create_engine(url, connect_args={"connect_timeout": CONNECT_TIMEOUT})

        @event.listens_for(engine, "connect")
        def _utc(dbapi_conn: Any, _record: Any) -> None:
            # timestamptz values come back in UTC whatever the role's or server's time zone
            dbapi_conn.execute("SET TIME ZONE 'UTC'")
            dbapi_conn.commit()

        # A connection back in the pool for a while is checked before use (PostgreSQL may have
        # restarted or dropped it): a failed check makes the pool open a new one.  Checking on
        # every use (`pool_pre_ping`) cost a round trip per store call.
        @event.listens_for(engine, "checkin")
        def _returned(_dbapi_conn: Any, record: Any) -> None:
            record.info["returned"] = time.monotonic()

        @event.listens_for(engine, "checkout")
        def _check(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
            if time.monotonic() - record.info.get("returned", 0.0) < PING_AFTER_IDLE:
                return
            try:
                engine.dialect.do_ping(dbapi_conn)
            except Exception as exc:
                raise DisconnectionError(str(exc)) from exc

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store(
    RunQueries,
    HistoryQueries,
    ScheduleQueries,
    AuditQueries,
    IdentityQueries,
    LineQueries,
    LoginQueries,
    CredentialQueries,
    TimelineQueries,
    MetricQueries,
    TemplateQueries,
):
    """Every query EasyTask makes; call from the database thread (see `call`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easytask-db")
        self._raw: Any = None
        self._run_day: dict[int, int] = {}
        self._weeks: set[int] = set()
        # The server this store works for (set by the server): its jobs carry it, and a server
        # resumes only its own unfinished jobs when several share the database.
        self.owner = ""
        # With several servers (PostgreSQL): the server whose heartbeat row each batch of
        # output lines must find (see `PgLineQueries._hold_fence`); None: no such check.
        self.fence_node: str | None = None
        self.health = outage.Health(safe_url(url))

    # -- plumbing ---------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method on the database thread without blocking the event loop.

        A database fault (see `outage.fault_of`) is raised as `Unavailable` (503 with
        `Retry-After` in the API) and noted in `health`; any other error as it is."""
        loop = asyncio.get_running_loop()
        return await self._answered(
            loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        )

    async def _answered(self, work: Awaitable[T]) -> T:
        """Await a call's `work`: a database fault becomes `Unavailable` and is noted in
        `health`, an answer is noted too."""
        try:
            result = await work
        except Exception as exc:
            fault = outage.fault_of(exc)
            if fault is None:
                raise
            self.health.failed(fault, exc)
            raise Unavailable(
                f"the database is unavailable ({fault}); try again in {outage.RETRY_AFTER} s",
                retry_after=outage.RETRY_AFTER,
            ) from exc
        self.health.answered(wrote=False)
        return result

    async def call_aside(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`call` on a thread of its own, with its own connection: for a long read (a walk of
        the whole audit chain) that must not hold up the database thread's other calls."""
        return await self._answered(asyncio.to_thread(fn, *args, **kwargs))

    async def persist(
        self,
        fn: Callable[..., T],
        *args: Any,
        on_fault: Callable[[], Awaitable[None]] | None = None,
        **kwargs: Any,
    ) -> T:
        """`call` a store method that writes, again and again through database faults (with
        backoff up to `outage.BACKOFF_MAX`) until it succeeds: for what must be stored, never
        dropped (output lines, run states).  `on_fault` is awaited after each failed attempt.
        Any other error is raised."""
        delay = outage.BACKOFF_FIRST
        while True:
            try:
                result = await self.call(fn, *args, **kwargs)
            except Unavailable:
                if on_fault is not None:
                    await on_fault()
                await asyncio.sleep(delay)
                delay = min(delay * 2, outage.BACKOFF_MAX)
                continue
            self.health.answered(wrote=True)
            return result

    def close(self) -> None:
        """Close connections and stop the database thread."""
        self._executor.shutdown(wait=True)
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        self.engine.dispose()

    def create_schema(self) -> None:
        """Bring the schema up to this release's revision (creating it in an empty database)."""
        schema.upgrade(self.engine)

    def schema_state(self) -> schema.SchemaState:
        """Where the database's schema stands against this release."""
        return schema.schema_state(self.engine)

    def ping(self) -> None:
        """A round trip to the database (readiness)."""
        with self.session() as s:
            s.exec(select(1)).one()


def dumps(value: Any) -> str:
    """Compact JSON used in text columns."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
