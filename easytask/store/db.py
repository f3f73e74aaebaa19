"""Engine, schema and every query; synchronous code run on one dedicated database thread."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
import secrets
import sqlite3
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import Any, TypeVar, overload

from sqlalchemy import bindparam, event, func, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlmodel import Session, SQLModel, col, create_engine, select

from easytask.lines import LEVELS
from easytask.store import audit as audit_chain
from easytask.store import schema
from easytask.store import statements as sql
from easytask.store.models import (
    Agent,
    ApiToken,
    AuditEvent,
    EnrollToken,
    Job,
    JobWebhook,
    LogLine,
    RevokedSession,
    Run,
    RunEvent,
    RunState,
    Schedule,
    ScheduleFire,
    User,
    WebhookDelivery,
    utcnow,
)

T = TypeVar("T")
PING_AFTER_IDLE = 5.0  # seconds a PostgreSQL connection rests in the pool before it is checked
M = TypeVar("M", bound=SQLModel)

# One row of the log writer's batch: run_id, seq, ts, stream, level, text.
LogRow = tuple[int, int, float, str, str, str]

_LINE_COLUMNS = "(run_id, seq, ts, stream, level, text)"
_LINE_CHUNK = 512  # rows per multi-row INSERT of log lines (SQLite)


@functools.cache
def _insert_lines_sql(rows: int) -> str:
    """One INSERT of `rows` log lines."""
    values = ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    return f"INSERT INTO log_line {_LINE_COLUMNS} VALUES {values}"


def _insert_chunk(dbapi_conn: Any) -> int:
    """Rows per multi-row INSERT: 512, or fewer where SQLite allows fewer parameters."""
    params = dbapi_conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(_LINE_CHUNK, params // 6))


@dataclass(slots=True)
class AuditNote:
    """An audit event to store with the change it records: who, what, from where, details."""

    actor: str
    action: str
    source: str
    detail: dict[str, Any]


@dataclass(slots=True)
class RunChange:
    """New values for some of a run's fields, and the timeline event that says why."""

    run_id: int
    event: str | None = None
    detail: str = ""
    fields: dict[str, Any] = dataclass_field(default_factory=dict)
    # What the change means for the run's job, in the same transaction: JOB_RUNNING marks a
    # queued job running, JOB_END ends the job if every run of it is final.
    job_id: int = 0
    then: str = ""


JOB_RUNNING = "running"
JOB_END = "end"


@overload
def as_utc(value: datetime) -> datetime: ...


@overload
def as_utc(value: None) -> None: ...


def as_utc(value: datetime | None) -> datetime | None:
    """Attach UTC to a naive datetime read back from SQLite."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def hash_secret(secret: str) -> str:
    """The at-rest form of a token: its SHA-256 (tokens are long and random)."""
    return hashlib.sha256(secret.encode()).hexdigest()


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
        engine = create_engine(url)

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


class Store:
    """Every query EasyTask makes; call from the database thread (see `call`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easytask-db")
        self._raw: Any = None
        # The server this store works for (set by the server): its jobs carry it, and a server
        # resumes only its own unfinished jobs when several share the database.
        self.owner = ""

    # -- plumbing ---------------------------------------------------------------------------

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a store method on the database thread without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

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

    def session(self) -> Session:
        """A new ORM session."""
        return Session(self.engine, expire_on_commit=False)

    # -- agents -----------------------------------------------------------------------------

    def list_agents(self) -> list[Agent]:
        """All agents, by name."""
        with self.session() as s:
            return list(s.exec(select(Agent).order_by(col(Agent.name))))

    def get_agent(self, name: str) -> Agent | None:
        """One agent by name."""
        with self.session() as s:
            return s.exec(select(Agent).where(Agent.name == name)).first()

    def register_agent(
        self, name: str, fingerprint: str, public_key: str, state: str, **fields: Any
    ) -> Agent:
        """Create or update an agent's identity (a name keeps its key once accepted)."""
        with self.session() as s:
            agent = s.exec(select(Agent).where(Agent.name == name)).first()
            if agent is None:
                agent = Agent(name=name, fingerprint=fingerprint, public_key=public_key)
            agent.fingerprint = fingerprint
            agent.public_key = public_key
            if agent.state != state:
                agent.state = state
                agent.state_since = utcnow()
            for key, value in fields.items():
                setattr(agent, key, value)
            s.add(agent)
            s.commit()
            s.refresh(agent)
            return agent

    def update_agent(self, name: str, **fields: Any) -> Agent | None:
        """Change some fields of an agent."""
        with self.session() as s:
            agent = s.exec(select(Agent).where(Agent.name == name)).first()
            if agent is None:
                return None
            if "state" in fields and fields["state"] != agent.state:
                agent.state_since = utcnow()
            if "connected" in fields and fields["connected"] != agent.connected:
                agent.state_since = utcnow()
            for key, value in fields.items():
                setattr(agent, key, value)
            s.add(agent)
            s.commit()
            s.refresh(agent)
            return agent

    def disconnect_all_agents(self, server: str) -> None:
        """Mark every agent held by this server as not connected (used at start and stop)."""
        with self.session() as s:
            for agent in s.exec(select(Agent).where(Agent.server == server, Agent.connected)):
                agent.connected = False
                agent.state_since = utcnow()
                s.add(agent)
            s.commit()

    # -- enrolment tokens -------------------------------------------------------------------

    def create_enroll_token(self, uses: int, ttl: float | None, created_by: str) -> str:
        """Create an enrolment token and return it (only its hash is kept)."""
        token = "et_enroll_" + secrets.token_urlsafe(24)
        expires = utcnow() + timedelta(seconds=ttl) if ttl else None
        with self.session() as s:
            s.add(
                EnrollToken(
                    token_hash=hash_secret(token),
                    uses_left=uses,
                    expires_at=expires,
                    created_by=created_by,
                )
            )
            s.commit()
        return token

    def consume_enroll_token(self, token: str) -> bool:
        """Use up one use of an enrolment token; False if unknown, spent or expired."""
        with self.session() as s:
            row = s.exec(
                select(EnrollToken).where(EnrollToken.token_hash == hash_secret(token))
            ).first()
            if row is None or row.uses_left <= 0:
                return False
            expires = as_utc(row.expires_at)
            if expires is not None and expires < utcnow():
                return False
            row.uses_left -= 1
            s.add(row)
            s.commit()
            return True

    # -- users and API tokens ---------------------------------------------------------------

    def ensure_user(self, name: str, role: str) -> User:
        """Return the user, creating it if needed."""
        with self.session() as s:
            user = s.exec(select(User).where(User.name == name)).first()
            if user is None:
                user = User(name=name, role=role)
                s.add(user)
                s.commit()
                s.refresh(user)
            return user

    def set_password_hash(self, name: str, password_hash: str) -> None:
        """Store a user's password hash."""
        with self.session() as s:
            user = s.exec(select(User).where(User.name == name)).one()
            user.password_hash = password_hash
            s.add(user)
            s.commit()

    def create_api_token(self, user_name: str, name: str, ttl: float | None = None) -> str:
        """Create an API token for a user and return it (only its hash is kept)."""
        return self.issue_api_token(user_name, name, ttl)[0]

    def issue_api_token(
        self, user_name: str, name: str, ttl: float | None = None
    ) -> tuple[str, ApiToken]:
        """Create an API token for a user: the secret (shown once) and its stored row."""
        token = "et_" + secrets.token_urlsafe(32)
        with self.session() as s:
            user = s.exec(select(User).where(User.name == user_name)).one()
            assert user.id is not None
            expires = utcnow() + timedelta(seconds=ttl) if ttl else None
            row = ApiToken(
                name=name, token_hash=hash_secret(token), user_id=user.id, expires_at=expires
            )
            s.add(row)
            s.commit()
            s.refresh(row)
        return token, row

    def list_api_tokens(self, user_name: str | None = None) -> list[tuple[ApiToken, str]]:
        """API tokens with their owner's name, oldest first; one user's only when named."""
        with self.session() as s:
            q = select(ApiToken, User.name).join(User, col(User.id) == col(ApiToken.user_id))
            if user_name is not None:
                q = q.where(User.name == user_name)
            return [(row, owner) for row, owner in s.exec(q.order_by(col(ApiToken.id)))]

    def revoke_api_token(self, token_id: int) -> tuple[ApiToken, str] | None:
        """Mark a token revoked; its row and owner, or None if there is no such token."""
        with self.session() as s:
            row = s.get(ApiToken, token_id)
            if row is None:
                return None
            row.revoked = True
            s.add(row)
            s.commit()
            s.refresh(row)
            owner = s.get(User, row.user_id)
            return row, owner.name if owner else ""

    def update_user(self, name: str, **fields: Any) -> User | None:
        """Change a user's role, scope, disabled flag or password hash; None if unknown."""
        return self._update_named(User, name, fields)

    def user_for_token(self, token: str) -> User | None:
        """The user a valid API token belongs to, recording its use."""
        with self.session() as s:
            row = s.exec(select(ApiToken).where(ApiToken.token_hash == hash_secret(token))).first()
            if row is None or row.revoked:
                return None
            expires = as_utc(row.expires_at)
            if expires is not None and expires < utcnow():
                return None
            user = s.get(User, row.user_id)
            if user is None or user.disabled:
                return None
            now = utcnow()
            last = as_utc(row.last_used)
            if last is None or (now - last).total_seconds() > 60:
                row.last_used = now
                s.add(row)
                s.commit()
            return user

    def revoke_session(self, sid: str, expires_at: datetime) -> None:
        """Refuse a console session id from now on (every server, after restarts too)."""
        from sqlalchemy import delete

        with self.session() as s:
            s.connection().execute(
                delete(RevokedSession).where(col(RevokedSession.expires_at) < utcnow())
            )
            sid_hash = hash_secret(sid)
            if s.exec(select(RevokedSession).where(RevokedSession.sid_hash == sid_hash)).first():
                s.commit()
                return
            s.add(RevokedSession(sid_hash=sid_hash, expires_at=expires_at))
            s.commit()

    def session_revoked(self, sid: str) -> bool:
        """True if a console session id was ended by logout."""
        with self.session() as s:
            row = s.exec(
                select(RevokedSession.id).where(RevokedSession.sid_hash == hash_secret(sid))
            ).first()
            return row is not None

    # -- jobs and runs ----------------------------------------------------------------------

    def create_job(
        self, job: Job, runs: Sequence[Run], audit: AuditNote | None = None
    ) -> tuple[Job, list[Run]]:
        """Insert a job and its runs, each with a `queued` event, in one transaction; with
        `audit`, its audit event too (the job's id added to its detail).

        Plain statements, no ORM unit of work: a client waits on this before its job starts.
        """
        job.server = job.server or self.owner
        with self.engine.begin() as conn:
            values = {name: getattr(job, name) for name in sql.JOB_FIELDS}
            job.id = sql.new_id(conn.execute(sql.INSERT_JOB, values))
            rows = []
            for run in runs:
                run.job_id = job.id
                run.server = run.server or job.server
                rows.append({name: getattr(run, name) for name in sql.RUN_FIELDS})
            if rows:
                # one executemany; the ids are read back in order (one transaction inserting
                # in order numbers its rows in that order)
                conn.execute(sql.INSERT_RUNS, rows)
                ids = conn.execute(sql.RUN_IDS, {"job_id": job.id}).scalars()
                for run, run_id in zip(runs, ids, strict=True):
                    run.id = run_id
                now = utcnow()
                events = [
                    {"run_id": run.id, "at": now, "kind": "queued", "detail": f"host {run.host}"}
                    for run in runs
                ]
                # one INSERT for all events; no model objects (pydantic defaults cost per object)
                conn.execute(sql.INSERT_RUN_EVENTS, events)
            if audit is not None:
                detail = {"job": job.id, **audit.detail}
                audit_chain.append(conn, audit.actor, audit.action, audit.source, detail)
        return job, list(runs)  # every field was set before the insert: nothing to read back

    def add_attempt(self, run_id: int, attempt: int) -> Run:
        """A new run row for the next attempt of a run (same job, task, host, command)."""
        with self.session() as s:
            prev = s.get(Run, run_id)
            if prev is None:
                raise KeyError(run_id)
            run = Run(
                job_id=prev.job_id,
                task=prev.task,
                host=prev.host,
                connection=prev.connection,
                agent=prev.agent,
                command=prev.command,
                attempt=attempt,
                server=self.owner,
            )
            s.add(run)
            s.flush()
            assert run.id is not None
            s.add(
                RunEvent(run_id=run.id, kind="queued", detail=f"attempt {attempt} of run {run_id}")
            )
            s.commit()
            s.refresh(run)
            return run

    # -- schedules ---------------------------------------------------------------------------

    def upsert_schedule(self, name: str, path: str, cron: str, tz: str, catch_up: str) -> Schedule:
        """Create or refresh a schedule from a playbook file; `enabled` is left as it was."""
        with self.session() as s:
            row = s.exec(select(Schedule).where(Schedule.name == name)).first()
            if row is None:
                row = Schedule(name=name, path=path, cron=cron, tz=tz, catch_up=catch_up)
            elif (row.path, row.cron, row.tz, row.catch_up) != (path, cron, tz, catch_up):
                if (row.cron, row.tz) != (cron, tz):
                    row.next_fire = None  # recomputed from the new expression
                row.path, row.cron, row.tz, row.catch_up = path, cron, tz, catch_up
                row.updated_at = utcnow()
            else:
                return row
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def list_schedules(self) -> list[Schedule]:
        """Every schedule, by name."""
        with self.session() as s:
            return list(s.exec(select(Schedule).order_by(col(Schedule.name))))

    def update_schedule(self, name: str, **fields: Any) -> Schedule | None:
        """Change a schedule's fields (enabled, next_fire, last_fire, last_job)."""
        return self._update_named(Schedule, name, fields)

    def _update_named(self, model: type[M], name: str, fields: dict[str, Any]) -> M | None:
        """Set fields of the row of `model` with this name; None if there is none."""
        with self.session() as s:
            row = s.exec(select(model).where(model.name == name)).first()  # type: ignore[attr-defined]
            if row is None:
                return None
            for key, value in fields.items():
                setattr(row, key, value)
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def claim_fire(self, schedule_id: int, fire_time: datetime, server: str) -> bool:
        """Record that a schedule fires for `fire_time`; False if it already did (any server)."""
        from sqlalchemy.exc import IntegrityError

        with self.session() as s:
            s.add(ScheduleFire(schedule_id=schedule_id, fire_time=fire_time, server=server))
            try:
                s.commit()
            except IntegrityError:
                s.rollback()
                return False
            return True

    def fires(self, schedule_id: int) -> list[ScheduleFire]:
        """A schedule's fire records, oldest first."""
        with self.session() as s:
            return list(
                s.exec(
                    select(ScheduleFire)
                    .where(ScheduleFire.schedule_id == schedule_id)
                    .order_by(col(ScheduleFire.fire_time))
                )
            )

    def set_fire_job(self, schedule_id: int, fire_time: datetime, job_id: int) -> None:
        """Link a fire record to the job it started."""
        with self.session() as s:
            row = s.exec(
                select(ScheduleFire).where(
                    ScheduleFire.schedule_id == schedule_id, ScheduleFire.fire_time == fire_time
                )
            ).first()
            if row is not None:
                row.job_id = job_id
                s.add(row)
                s.commit()

    # -- audit -------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, source: str, detail: dict[str, Any]) -> AuditEvent:
        """Append an event to the audit chain."""
        with self.engine.begin() as conn:
            return audit_chain.append(conn, actor, action, source, detail)

    def audit_events(
        self,
        *,
        since: datetime | None = None,
        action: str | None = None,
        actor: str | None = None,
        before_id: int | None = None,
        limit: int = 200,
    ) -> list[AuditEvent]:
        """Audit events, newest first."""
        with self.session() as s:
            q = select(AuditEvent)
            if since is not None:
                q = q.where(AuditEvent.at >= since)
            if action:
                q = q.where(col(AuditEvent.action).startswith(action))
            if actor:
                q = q.where(AuditEvent.actor == actor)
            if before_id is not None:
                q = q.where(col(AuditEvent.id) < before_id)
            return list(s.exec(q.order_by(col(AuditEvent.id).desc()).limit(limit)))

    def audit_verify(self) -> dict[str, Any]:
        """Walk the audit chain (see easytask.store.audit.verify)."""
        with self.session() as s:
            return audit_chain.verify(s)

    def get_job(self, job_id: int) -> Job | None:
        """One job."""
        with self.session() as s:
            return s.get(Job, job_id)

    def job_stream_start(
        self, job_id: int, runs: bool, limit: int
    ) -> tuple[list[Run], dict[int, str], list[Any], Job | None]:
        """What a job's event stream starts with: its runs (if `runs`), their hosts by run id,
        its first `limit` lines (rows as `read_job_lines` gives them), and the job as it is
        after those lines were read; one connection, plain statements (a client waits)."""
        with self.engine.connect() as conn:
            if runs:
                with Session(conn) as s:
                    snapshot = list(
                        s.exec(select(Run).where(Run.job_id == job_id).order_by(col(Run.id)))
                    )
                hosts = {r.id or 0: r.host for r in snapshot}
            else:
                snapshot = []
                rows = conn.execute(sql.RUN_HOSTS, {"job_id": job_id})
                hosts = {row.id: row.host for row in rows}
            lines = self._job_lines(conn, job_id, 0, limit) if limit else []
            found = conn.execute(sql.JOB_ROW, {"job_id": job_id}).first()
            return snapshot, hosts, lines, Job(**found._mapping) if found else None

    def job_hosts(self, job_id: int) -> dict[int, str]:
        """The host of each run of a job, by run id (no row objects)."""
        with self.engine.connect() as conn:
            rows = conn.execute(sql.RUN_HOSTS, {"job_id": job_id})
            return {row.id: row.host for row in rows}

    def job_runs(self, job_id: int) -> list[Run]:
        """The runs of a job, in host order of submission."""
        with self.session() as s:
            return list(s.exec(select(Run).where(Run.job_id == job_id).order_by(col(Run.id))))

    def get_run(self, run_id: int) -> Run | None:
        """One run."""
        with self.session() as s:
            return s.get(Run, run_id)

    def update_run(
        self, run_id: int, event: str | None = None, detail: str = "", **fields: Any
    ) -> Run:
        """Change a run's fields and add a timeline event, in one transaction."""
        missing = self.update_runs([RunChange(run_id, event, detail, fields)])[0]
        if isinstance(missing, KeyError):
            raise missing
        with self.session() as s:
            run = s.get(Run, run_id)
            assert run is not None
            return run

    def update_runs(self, changes: Sequence[RunChange]) -> list[KeyError | Job | None]:
        """Apply run changes in order, all in one transaction.  For each change: a KeyError if
        its run is missing, the job if the change ended it (`then=JOB_END`), else None.

        A fan-out changes hundreds of runs at once: the changes of one run are folded into one
        row of new values (later ones win), runs changing the same fields are updated by one
        executemany, and the timeline events go in as one multi-row insert.  Missing runs are
        looked for only when the updates matched fewer rows than asked.
        """
        table = sql.RUN
        merged: dict[int, dict[str, Any]] = {}
        for change in changes:
            if change.fields:
                merged.setdefault(change.run_id, {}).update(change.fields)
        by_fields: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for run_id, fields in merged.items():
            row = {f"new_{name}": value for name, value in fields.items()}
            row["run_id"] = run_id
            by_fields.setdefault(tuple(sorted(fields)), []).append(row)
        missing: set[int] = set()

        def absent(conn: Any, ids: Iterable[int]) -> set[int]:
            wanted = set(ids)
            present = conn.execute(select(table.c.id).where(table.c.id.in_(wanted))).scalars()
            return wanted - set(present)

        ended: dict[int, Job | None] = {}
        with self.engine.begin() as conn:
            for names, rows in by_fields.items():
                if conn.execute(sql.update_runs(names), rows).rowcount != len(rows):
                    missing |= absent(conn, (row["run_id"] for row in rows))
            only_events = {c.run_id for c in changes if c.run_id not in merged}
            if only_events:
                missing |= absent(conn, only_events)
            now = utcnow()
            events = [
                {"run_id": c.run_id, "at": now, "kind": c.event, "detail": c.detail}
                for c in changes
                if c.event and c.run_id not in missing
            ]
            if events:
                conn.execute(sql.INSERT_RUN_EVENTS, events)
            running = {c.job_id for c in changes if c.then == JOB_RUNNING and c.job_id}
            if running:
                self._job_running(conn, running)
            for change in changes:
                if change.then == JOB_END and change.job_id and change.job_id not in ended:
                    ended[change.job_id] = self._end_job(conn, change.job_id)
        results: list[KeyError | Job | None] = []
        for c in changes:
            if c.run_id in missing:
                results.append(KeyError(c.run_id))
            elif c.then == JOB_END:
                results.append(ended.pop(c.job_id, None))  # the first change asking gets it
            else:
                results.append(None)
        return results

    @staticmethod
    def _job_running(conn: Any, job_ids: Iterable[int]) -> None:
        conn.execute(sql.JOB_RUNNING, {"job_ids": list(job_ids)})

    def mark_job_running(self, job_id: int) -> None:
        """A queued job becomes running when its first run starts."""
        with self.engine.begin() as conn:
            self._job_running(conn, [job_id])

    def finish_job_if_done(self, job_id: int) -> Job | None:
        """Set a job's aggregate state once all its runs are final; return it if it changed."""
        with self.engine.begin() as conn:
            return self._end_job(conn, job_id)

    def _end_job(self, conn: Any, job_id: int) -> Job | None:
        """finish_job_if_done in the caller's transaction: plain statements on the columns that
        decide (a fan-out's job has thousands of runs; a client waits for the end)."""
        found = conn.execute(sql.JOB_ROW, {"job_id": job_id}).first()
        if found is None or found.state in RunState.FINAL:
            return None
        rows = list(conn.execute(sql.RUN_OUTCOMES, {"job_id": job_id}))
        if not rows or any(r.state not in RunState.FINAL for r in rows):
            if found.state == RunState.QUEUED and any(r.state != RunState.QUEUED for r in rows):
                self._job_running(conn, [job_id])
            return None
        # A run that was retried counts by its last attempt.
        latest: dict[tuple[str, str], Any] = {}
        for r in sorted(rows, key=lambda r: (r.attempt, r.id or 0)):
            latest[(r.task, r.host)] = r
        states = [r.state for r in latest.values()]
        if all(st in (RunState.SUCCESS, RunState.SKIPPED) for st in states):
            state = RunState.SUCCESS
        elif any(st == RunState.TERMINATED for st in states):
            state = RunState.TERMINATED
        elif any(st == RunState.FAILED for st in states):
            state = RunState.FAILED
        else:
            state = RunState.UNREACHABLE
        now = utcnow()
        params = {"job_id": job_id, "new_state": state, "new_finished_at": now}
        if not conn.execute(sql.JOB_END, params).rowcount:
            return None
        job = Job(**{**found._mapping, "state": state, "finished_at": now})
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        audit_chain.append(
            conn,
            job.submitted_by,
            "job.finish",
            "",
            {"job": job.id, "kind": job.kind, "state": job.state, "runs": counts},
        )
        return job

    def unfinished_runs(self, job_ids: Sequence[int] | None = None) -> list[Run]:
        """Runs not in a final state of this server's jobs, or of jobs no server owns (reconciled
        when a server starts; another server's jobs are left to it); only of `job_ids` if given."""
        with self.session() as s:
            q = (
                select(Run)
                .join(Job, col(Job.id) == col(Run.job_id))
                .where(
                    col(Run.state).not_in(list(RunState.FINAL)),
                    col(Job.server).in_(["", self.owner]),
                )
            )
            if job_ids is not None:
                q = q.where(col(Run.job_id).in_(list(job_ids)))
            return list(s.exec(q.order_by(col(Run.id))))

    def run_events(self, run_id: int) -> list[RunEvent]:
        """A run's timeline, oldest first."""
        with self.session() as s:
            return list(
                s.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.id)))
            )

    # -- retention ----------------------------------------------------------------------------

    @staticmethod
    def _prunable(ok_before: datetime | None, failed_before: datetime | None) -> Any:
        """Runs that ended before their cutoff: success/skipped by one, failures by the other."""
        from sqlalchemy import and_, false, or_

        ended = func.coalesce(Run.finished_at, Run.created_at)
        ok_states = [RunState.SUCCESS, RunState.SKIPPED]
        failed_states = [RunState.FAILED, RunState.TERMINATED, RunState.UNREACHABLE]
        conds = []
        if ok_before is not None:
            conds.append(and_(col(Run.state).in_(ok_states), ended < ok_before))
        if failed_before is not None:
            conds.append(and_(col(Run.state).in_(failed_states), ended < failed_before))
        return or_(*conds) if conds else false()

    def prune_counts(
        self, ok_before: datetime | None, failed_before: datetime | None
    ) -> dict[str, int]:
        """What a prune would delete: jobs (left without runs), runs and log lines."""
        from sqlalchemy import not_

        cand = self._prunable(ok_before, failed_before)
        with self.session() as s:
            runs = s.exec(select(func.count()).select_from(Run).where(cand)).one()
            lines = s.exec(
                select(func.count())
                .select_from(LogLine)
                .where(col(LogLine.run_id).in_(select(Run.id).where(cand)))
            ).one()
            jobs = s.exec(
                select(func.count())
                .select_from(Job)
                .where(
                    col(Job.id).in_(select(Run.job_id).where(cand)),
                    col(Job.id).not_in(select(Run.job_id).where(not_(cand))),
                )
            ).one()
        return {"jobs": int(jobs or 0), "runs": int(runs or 0), "lines": int(lines or 0)}

    def prune_batch(
        self, ok_before: datetime | None, failed_before: datetime | None, batch: int = 100
    ) -> dict[str, int]:
        """Delete up to `batch` prunable runs with their lines, index rows and timeline, in one
        transaction, then the jobs left without runs. The audit log is never touched."""

        cand = self._prunable(ok_before, failed_before)
        with self.session() as s:
            rows = list(
                s.exec(select(Run.id, Run.job_id).where(cand).order_by(col(Run.id)).limit(batch))
            )
            if not rows:
                return {"jobs": 0, "runs": 0, "lines": 0}
            run_ids = [int(r[0] or 0) for r in rows]
            job_ids = sorted({r[1] for r in rows})

            def run(sql: str, ids: list[int]) -> Any:
                stmt = text(sql).bindparams(bindparam("ids", expanding=True))
                return s.connection().execute(stmt, {"ids": ids})

            lines = run("SELECT count(*) FROM log_line WHERE run_id IN :ids", run_ids).scalar()
            if self.is_sqlite:
                run(
                    "INSERT INTO log_fts(log_fts, rowid, text) "
                    "SELECT 'delete', id, text FROM log_line WHERE run_id IN :ids",
                    run_ids,
                )
            run("DELETE FROM log_line WHERE run_id IN :ids", run_ids)
            run("DELETE FROM runevent WHERE run_id IN :ids", run_ids)
            run("DELETE FROM run WHERE id IN :ids", run_ids)
            jobs = run(
                "DELETE FROM job WHERE id IN :ids "
                "AND NOT EXISTS (SELECT 1 FROM run WHERE run.job_id = job.id)",
                job_ids,
            ).rowcount
            s.commit()
        return {"jobs": int(jobs or 0), "runs": len(run_ids), "lines": int(lines or 0)}

    # -- log lines --------------------------------------------------------------------------

    def _raw_conn(self) -> Any:
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        return self._raw

    def write_lines(self, rows: Sequence[LogRow]) -> None:
        """Store a batch of log lines in one transaction and index them for search."""
        if not rows:
            return
        conn = self._raw_conn()
        try:
            if self.is_sqlite:
                self._write_lines_sqlite(conn, rows)
            else:
                self._write_lines_postgres(conn, rows)
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                # the connection is gone (server restart, network): the next batch opens a new one
                self._raw = None
                conn.invalidate()
            raise

    @staticmethod
    def _write_lines_sqlite(conn: Any, rows: Sequence[LogRow]) -> None:
        cur = conn.cursor()
        try:
            cur.execute("SELECT coalesce(max(id), 0) FROM log_line")
            first = cur.fetchone()[0]
            # Multi-row INSERTs rather than executemany: executemany hands the interpreter lock
            # back and forth for every row, and while the event loop is busy each hand-back waits
            # for it; one statement per chunk does it once per chunk (and runs twice as fast).
            # Chunks of 512 rows, then halves for the rest: few statement shapes, all cached.
            size = _insert_chunk(conn.driver_connection)
            start, total = 0, len(rows)
            while start < total:
                while total - start < size:
                    size //= 2
                cur.execute(
                    _insert_lines_sql(size), list(chain.from_iterable(rows[start : start + size]))
                )
                start += size
            cur.execute(
                "INSERT INTO log_fts(rowid, text) SELECT id, text FROM log_line WHERE id > ?",
                (first,),
            )
        finally:
            cur.close()

    @staticmethod
    def _write_lines_postgres(conn: Any, rows: Sequence[LogRow]) -> None:
        # COPY is psycopg's fastest path; the trigram index is kept by PostgreSQL itself.
        # PostgreSQL text cannot hold NUL, which a command may well print: it becomes U+FFFD.
        cur = conn.driver_connection.cursor()
        try:
            with cur.copy(
                "COPY log_line (run_id, seq, ts, stream, level, text) FROM STDIN"
            ) as copy:
                for run_id, seq, ts, stream, level, line in rows:
                    if "\x00" in line:
                        line = line.replace("\x00", "\ufffd")
                    copy.write_row((run_id, seq, ts, stream, level, line))
        finally:
            cur.close()

    def read_lines(
        self,
        run_id: int,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        levels: Iterable[str] | None = None,
        grep: str | None = None,
    ) -> list[LogLine]:
        """A run's stored lines after a sequence number, optionally filtered."""
        with self.session() as s:
            q = select(LogLine).where(LogLine.run_id == run_id, LogLine.seq > after_seq)
            if levels:
                q = q.where(col(LogLine.level).in_(list(levels)))
            if grep:
                q = q.where(self._contains(col(LogLine.text), grep))
            q = q.order_by(col(LogLine.seq))
            if limit:
                q = q.limit(limit)
            return list(s.exec(q))

    def read_job_lines(self, job_id: int, after_id: int = 0, limit: int = 5000) -> list[Any]:
        """Lines of every run of a job in arrival order (by row id), after a row id: rows with
        the fields of LogLine (id, run_id, seq, ts, stream, level, text)."""
        with self.engine.connect() as conn:
            return self._job_lines(conn, job_id, after_id, limit)

    @staticmethod
    def _job_lines(conn: Any, job_id: int, after_id: int, limit: int) -> list[Any]:
        params = {"job_id": job_id, "after_id": after_id, "limit": limit}
        return list(conn.execute(sql.JOB_LINES, params))

    def count_output_lines(self, run_id: int) -> int:
        """Stored stdout and stderr lines of a run (system lines excluded)."""
        with self.session() as s:
            value = s.exec(
                select(func.count()).where(LogLine.run_id == run_id, LogLine.stream != "system")
            ).one()
            return int(value or 0)

    def output_bytes(self, run_id: int) -> int:
        """Characters of stored output of a run (the head already kept, after a restart)."""
        with self.session() as s:
            value = s.exec(
                select(func.sum(func.length(LogLine.text))).where(
                    LogLine.run_id == run_id, LogLine.stream != "system"
                )
            ).one()
            return int(value or 0)

    def max_seq(self, run_id: int) -> int:
        """The highest stored sequence number of a run (0 when none)."""
        with self.session() as s:
            value = s.exec(select(func.max(LogLine.seq)).where(LogLine.run_id == run_id)).one()
            return int(value or 0)

    def line_stats(self, run_id: int) -> tuple[int, int]:
        """Count of stored lines and the highest seq (they are equal when nothing is missing)."""
        with self.session() as s:
            count, top = s.exec(
                select(func.count(), func.max(LogLine.seq)).where(LogLine.run_id == run_id)
            ).one()
            return int(count or 0), int(top or 0)

    # -- console: users, jobs, run history and log windows ------------------------------------

    def get_user(self, name: str) -> User | None:
        """One user by name."""
        with self.session() as s:
            return s.exec(select(User).where(User.name == name)).first()

    def get_user_by_id(self, user_id: int) -> User | None:
        """One user by id."""
        with self.session() as s:
            return s.get(User, user_id)

    def create_user(self, name: str, role: str, password_hash: str, scope: str = "") -> User | None:
        """Create a user; None if the name is taken."""
        with self.session() as s:
            if s.exec(select(User).where(User.name == name)).first() is not None:
                return None
            user = User(name=name, role=role, password_hash=password_hash, scope=scope)
            s.add(user)
            s.commit()
            s.refresh(user)
            return user

    def list_users(self) -> list[User]:
        """All users, by name."""
        with self.session() as s:
            return list(s.exec(select(User).order_by(col(User.name))))

    def list_jobs(self, *, states: Sequence[str] | None = None, limit: int = 20) -> list[Job]:
        """Jobs, newest first, optionally only those in some states."""
        with self.session() as s:
            q = select(Job)
            if states:
                q = q.where(col(Job.state).in_(list(states)))
            return list(s.exec(q.order_by(col(Job.id).desc()).limit(limit)))

    def run_state_counts(self) -> dict[str, int]:
        """How many runs are in each state, over the whole store."""
        with self.session() as s:
            q = select(Run.state, func.count()).group_by(col(Run.state))
            return {state: int(count) for state, count in s.exec(q)}

    def ping(self) -> None:
        """A round trip to the database (readiness)."""
        with self.session() as s:
            s.exec(select(1)).one()

    def add_job_webhooks(self, job_id: int, hooks: Sequence[tuple[str, str]]) -> None:
        """Remember the webhooks (url, events) a job calls when it finishes."""
        with self.session() as s:
            for url, events in hooks:
                s.add(JobWebhook(job_id=job_id, url=url, events=events))
            s.commit()

    def job_webhooks(self, job_id: int) -> list[JobWebhook]:
        """The webhooks a job asked for."""
        with self.session() as s:
            q = select(JobWebhook).where(JobWebhook.job_id == job_id).order_by(col(JobWebhook.id))
            return list(s.exec(q))

    def add_delivery(self, row: WebhookDelivery) -> WebhookDelivery:
        """Record one webhook delivery attempt."""
        with self.session() as s:
            s.add(row)
            s.commit()
            s.refresh(row)
            return row

    def deliveries(self, job_id: int) -> list[WebhookDelivery]:
        """Every webhook delivery attempt for a job, oldest first."""
        with self.session() as s:
            q = (
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(col(WebhookDelivery.id))
            )
            return list(s.exec(q))

    def job_state_counts(self, job_ids: Sequence[int]) -> dict[int, dict[str, int]]:
        """For each job, how many of its runs are in each state."""
        out: dict[int, dict[str, int]] = {jid: {} for jid in job_ids}
        if not job_ids:
            return out
        with self.session() as s:
            q = (
                select(Run.job_id, Run.state, func.count())
                .where(col(Run.job_id).in_(list(job_ids)))
                .group_by(col(Run.job_id), col(Run.state))
            )
            for job_id, state, count in s.exec(q):
                out[job_id][state] = int(count)
        return out

    def find_runs(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        status: Sequence[str] | None = None,
        host: str | None = None,
        task: str | None = None,
        user: str | None = None,
        text: str | None = None,
        job_id: int | None = None,
        before_id: int | None = None,
        after_id: int | None = None,
        limit: int = 50,
    ) -> list[tuple[Run, str]]:
        """Runs with who submitted them, newest first, keyset-paginated by id (before or after).

        `host` may hold `*`/`?` wildcards; `task` matches the task name or the command; `text`
        is searched in the output as one phrase (FTS5 on SQLite), so no input is a syntax error.
        """
        with self.session() as s:
            q = select(Run, Job.submitted_by).join(Job, col(Job.id) == col(Run.job_id))
            if since is not None:
                q = q.where(Run.created_at >= since)
            if until is not None:
                q = q.where(Run.created_at < until)
            if status:
                q = q.where(col(Run.state).in_(list(status)))
            if host:
                if "*" in host or "?" in host:
                    pattern = host.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                    pattern = pattern.replace("*", "%").replace("?", "_")
                    q = q.where(col(Run.host).like(pattern, escape="\\"))
                else:
                    q = q.where(Run.host == host)
            if task:
                q = q.where(
                    col(Run.task).icontains(task, autoescape=True)
                    | col(Run.command).icontains(task, autoescape=True)
                )
            if user:
                q = q.where(Job.submitted_by == user)
            if job_id is not None:
                q = q.where(Run.job_id == job_id)
            if text:
                q = q.where(col(Run.id).in_(self._runs_with_text(text)))
            if before_id is not None:
                q = q.where(col(Run.id) < before_id)
            if after_id is not None:
                q = q.where(col(Run.id) > after_id).order_by(col(Run.id)).limit(limit)
                rows = list(s.exec(q))
                rows.reverse()
                return [(run, by) for run, by in rows]
            q = q.order_by(col(Run.id).desc()).limit(limit)
            return [(run, by) for run, by in s.exec(q)]

    def _runs_with_text(self, needle: str) -> Any:
        """A subquery of the ids of runs whose output contains a phrase."""
        from sqlalchemy import column, false

        needle = needle.replace("\x00", "")
        if not needle.strip():  # an empty phrase matches nothing, as in FTS5
            return select(LogLine.run_id).where(false())
        if self.is_sqlite:
            phrase = '"' + needle.replace('"', '""') + '"'
            matching = (
                text("SELECT rowid FROM log_fts WHERE log_fts MATCH :phrase")
                .bindparams(phrase=phrase)
                .columns(column("rowid"))
            )
            return select(LogLine.run_id).where(col(LogLine.id).in_(matching)).distinct()
        # ILIKE '%needle%' is served by the trigram index (see docs/decisions/0007-postgresql-and-migrations.md)
        return select(LogLine.run_id).where(self._contains(col(LogLine.text), needle)).distinct()

    def count_lines(self, run_id: int, levels: Sequence[str] | None = None) -> tuple[int, int]:
        """How many stored lines of a run have one of the levels (all when None), and the top seq."""
        with self.session() as s:
            top = s.exec(select(func.max(LogLine.seq)).where(LogLine.run_id == run_id)).one()
            if not levels:
                return int(top or 0), int(top or 0)
            count = s.exec(
                select(func.count())
                .select_from(LogLine)
                .where(LogLine.run_id == run_id, col(LogLine.level).in_(list(levels)))
            ).one()
            return int(count or 0), int(top or 0)

    def line_window(
        self,
        run_id: int,
        *,
        offset: int,
        limit: int,
        levels: Sequence[str] | None = None,
        after_seq: int | None = None,
    ) -> list[LogLine]:
        """Lines at positions offset..offset+limit-1 of a run's (level-filtered) log.

        Unfiltered, position p is seq p+1 (seqs have no gaps). Filtered, `after_seq` (the seq of
        the line just before `offset`, when the caller knows it) avoids counting from the start.
        """
        with self.session() as s:
            q = select(LogLine).where(LogLine.run_id == run_id)
            if not levels:
                q = q.where(LogLine.seq > offset, LogLine.seq <= offset + limit)
                return list(s.exec(q.order_by(col(LogLine.seq))))
            q = q.where(col(LogLine.level).in_(list(levels)))
            if after_seq is not None:
                q = q.where(LogLine.seq > after_seq).order_by(col(LogLine.seq)).limit(limit)
            else:
                q = q.order_by(col(LogLine.seq)).offset(offset).limit(limit)
            return list(s.exec(q))

    def _contains(self, column: Any, needle: str) -> Any:
        """`column` contains `needle` as literal text, ignoring case.

        SQLite's `LIKE` already ignores case (of ASCII letters, as its `lower()` does), and
        reads each row once; `ilike` would add `lower()` on both sides and take twice as long.
        The needle is a bound parameter, so quotes and any other syntax are just characters.
        """
        pattern, escape = like_pattern(needle)
        if self.is_sqlite:
            return column.like(pattern, escape=escape)
        return column.ilike(pattern, escape=escape)

    def search_lines(
        self, run_id: int, needle: str, *, levels: Sequence[str] | None = None, limit: int = 10000
    ) -> list[tuple[int, int]]:
        """(seq, position in the level-filtered log) of lines containing `needle`, ignoring case."""
        with self.session() as s:
            found = None
            if self.is_sqlite:
                found = self._search_by_index(s, run_id, needle, limit, levels)
            if found is None:
                q = select(LogLine.seq).where(
                    LogLine.run_id == run_id, self._contains(col(LogLine.text), needle)
                )
                if levels:
                    q = q.where(col(LogLine.level).in_(list(levels)))
                found = [int(seq) for seq in s.exec(q.order_by(col(LogLine.seq)).limit(limit))]
            if not levels or not found:
                return [(seq, seq - 1) for seq in found]
            return list(zip(found, self._positions(s, run_id, found, levels), strict=True))

    def _positions(
        self, s: Session, run_id: int, seqs: list[int], levels: Sequence[str]
    ) -> list[int]:
        """Positions of lines (sorted seqs, all of the given levels) in the level-filtered log.

        A line's position is the number of lines of those levels before it or, as seqs have no
        gaps, its seq - 1 minus the lines of the other levels before it. The seqs of the other
        levels are read first (usually few: DEBUG lines hidden), up to `POSITION_MARKS`; if
        there are more, those of the chosen levels (few when only ERROR is shown); if both sides
        are large, all of the other levels'. The level index is read in seq order and the
        positions are found by bisection.
        """
        last = seqs[-1]

        def marks(names: Sequence[str], most: int | None) -> list[int] | None:
            # one query per level: each reads its index range in seq order and can stop early
            out: list[int] = []
            for name in names:
                q = (
                    select(LogLine.seq)
                    .where(LogLine.run_id == run_id, LogLine.level == name, LogLine.seq < last)
                    .order_by(col(LogLine.seq))
                )
                if most is not None:
                    q = q.limit(most - len(out) + 1)
                out += s.exec(q).all()
                if most is not None and len(out) > most:
                    return None
            return sorted(out)

        others = [lv for lv in LEVELS if lv not in levels]
        hidden = marks(others, POSITION_MARKS)
        if hidden is None:
            shown = marks(levels, POSITION_MARKS)
            if shown is not None:
                return [bisect_left(shown, seq) for seq in seqs]
            hidden = marks(others, None) or []
        return [seq - 1 - bisect_left(hidden, seq) for seq in seqs]

    def _search_by_index(
        self,
        s: Session,
        run_id: int,
        needle: str,
        limit: int,
        levels: Sequence[str] | None = None,
    ) -> list[int] | None:
        """Seqs of a run's lines containing `needle`, from the few lines the full-text index
        names; None when the index cannot narrow the search enough (then every line is read).

        Every line that contains the needle has the needle's inner words as whole words, and
        its last word as the start of one (see `index_words`), so the index gives a superset;
        `LIKE` then keeps exactly the lines that contain the needle. This relies on every stored
        line being in the index, as `write_lines` keeps it (the runs list's text filter relies on
        the same): whatever writes `log_line` rows must index them too.
        """
        conn = s.connection()

        def few(query: str) -> bool:
            count = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT rowid FROM log_fts WHERE log_fts MATCH :q "
                    "LIMIT :most)"
                ),
                {"q": query, "most": INDEX_CANDIDATES + 1},
            ).scalar_one()
            return bool(count <= INDEX_CANDIDATES)

        words, prefix = index_words(needle)
        if words:
            probes = [f'"{w}"' for w in words[:3]]
        elif prefix is not None and few(f'"{prefix}"'):
            # A prefix query reads every word it covers: asked only when the word itself is rare.
            probes = [f'"{prefix}" *']
        else:
            return None
        query = next((probe for probe in probes if few(probe)), None)
        if query is None:
            return None
        pattern, escape = like_pattern(needle)
        params: dict[str, Any] = {
            "q": query,
            "run": run_id,
            "pattern": pattern,
            "escape": escape,
            "limit": limit,
        }
        where = ""
        if levels:
            names = [f"lv{i}" for i in range(len(levels))]
            where = " AND l.level IN (" + ", ".join(":" + n for n in names) + ")"
            params.update(zip(names, levels, strict=True))
        rows = conn.execute(
            text(
                "SELECT l.seq FROM (SELECT rowid AS id FROM log_fts WHERE log_fts MATCH :q) AS f "
                "CROSS JOIN log_line AS l ON l.id = f.id "
                "WHERE l.run_id = :run AND l.text LIKE :pattern"
                + (" ESCAPE :escape" if escape else "")
                + where
                + " ORDER BY l.seq LIMIT :limit"
            ),
            params,
        )
        return [int(r[0]) for r in rows]

    def line_tuples(
        self, run_id: int, after_seq: int = 0, limit: int = 10000
    ) -> list[tuple[int, float, str, str, str]]:
        """(seq, ts, stream, level, text) of a run's lines after a seq: no ORM objects, for bulk reads."""
        with self.session() as s:
            rows = s.connection().execute(
                text(
                    "SELECT seq, ts, stream, level, text FROM log_line "
                    "WHERE run_id = :run AND seq > :after ORDER BY seq LIMIT :limit"
                ),
                {"run": run_id, "after": after_seq, "limit": limit},
            )
            return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]


INDEX_CANDIDATES = 20000  # lines the full-text index may name before a search reads them all
POSITION_MARKS = 20_000  # seqs read from one side before trying the other (numbering matches)
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")


def like_pattern(needle: str) -> tuple[str, str | None]:
    """A `LIKE` pattern for lines containing `needle` literally, and its escape character.

    `%`, `_` and the escape character are escaped; the pattern carries an escape character only
    when it needs one (an ESCAPE clause costs a little per row on SQLite).
    """
    needle = needle.replace("\x00", "")  # PostgreSQL text cannot hold NUL; no stored line has it
    if not any(ch in needle for ch in "\\%_"):
        return "%" + needle + "%", None
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%" + escaped + "%", "\\"


def index_words(needle: str) -> tuple[list[str], str | None]:
    """Words of `needle` that every line containing it holds as whole words in the full-text
    index (longest first), and its last word when only that word's start is certain.

    Only ASCII letters and digits between ASCII separators count: the index (FTS5 `unicode61`)
    splits text at every such separator, so a word with a separator on both sides inside the
    needle is a whole word of any line that contains the needle; the last word, with a
    separator before it and the needle's end after it, starts one. A word at the needle's start
    may be the end of a longer word, and a word next to other characters is not used.
    """
    words: list[str] = []
    prefix = None
    for match in _ASCII_WORD.finditer(needle):
        start, end = match.span()
        before = start > 0 and needle[start - 1].isascii()
        if not before:
            continue
        if end < len(needle) and needle[end].isascii():
            words.append(match.group().lower())
        elif end == len(needle):
            prefix = match.group().lower()
    words.sort(key=len, reverse=True)
    return words, prefix


def dumps(value: Any) -> str:
    """Compact JSON used in text columns."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
