"""Engine, schema and every query; synchronous code run on one dedicated database thread."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event, func, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col, create_engine, select

from easytask.store.models import (
    Agent,
    ApiToken,
    EnrollToken,
    Job,
    LogLine,
    Run,
    RunEvent,
    RunState,
    User,
    utcnow,
)

T = TypeVar("T")

# One row of the log writer's batch: run_id, seq, ts, stream, level, text.
LogRow = tuple[int, int, float, str, str, str]


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


def make_engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL mode and a busy timeout."""
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
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Every query EasyTask makes; call from the database thread (see `call`)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = url.startswith("sqlite")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="easytask-db")
        self._raw: Any = None

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
        """Create tables and the full-text index if they are missing."""
        SQLModel.metadata.create_all(self.engine)
        if self.is_sqlite:
            with self.engine.begin() as conn:
                conn.execute(
                    text(
                        "CREATE VIRTUAL TABLE IF NOT EXISTS log_fts USING fts5("
                        "text, content='log_line', content_rowid='id')"
                    )
                )

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
            row = s.exec(select(EnrollToken).where(EnrollToken.token_hash == hash_secret(token))).first()
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
        token = "et_" + secrets.token_urlsafe(32)
        with self.session() as s:
            user = s.exec(select(User).where(User.name == user_name)).one()
            assert user.id is not None
            expires = utcnow() + timedelta(seconds=ttl) if ttl else None
            s.add(
                ApiToken(
                    name=name, token_hash=hash_secret(token), user_id=user.id, expires_at=expires
                )
            )
            s.commit()
        return token

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

    # -- jobs and runs ----------------------------------------------------------------------

    def create_job(self, job: Job, runs: Sequence[Run]) -> tuple[Job, list[Run]]:
        """Insert a job and its runs, each with a `queued` event, in one transaction."""
        with self.session() as s:
            s.add(job)
            s.flush()
            assert job.id is not None
            for run in runs:
                run.job_id = job.id
                s.add(run)
            s.flush()
            for run in runs:
                assert run.id is not None
                s.add(RunEvent(run_id=run.id, kind="queued", detail=f"host {run.host}"))
            s.commit()
            for run in runs:
                s.refresh(run)
            s.refresh(job)
            return job, list(runs)

    def get_job(self, job_id: int) -> Job | None:
        """One job."""
        with self.session() as s:
            return s.get(Job, job_id)

    def job_runs(self, job_id: int) -> list[Run]:
        """The runs of a job, in host order of submission."""
        with self.session() as s:
            return list(s.exec(select(Run).where(Run.job_id == job_id).order_by(col(Run.id))))

    def get_run(self, run_id: int) -> Run | None:
        """One run."""
        with self.session() as s:
            return s.get(Run, run_id)

    def update_run(self, run_id: int, event: str | None = None, detail: str = "", **fields: Any) -> Run:
        """Change a run's fields and add a timeline event, in one transaction."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise KeyError(run_id)
            for key, value in fields.items():
                setattr(run, key, value)
            s.add(run)
            if event:
                s.add(RunEvent(run_id=run_id, kind=event, detail=detail))
            s.commit()
            s.refresh(run)
            return run

    def finish_job_if_done(self, job_id: int) -> Job | None:
        """Set a job's aggregate state once all its runs are final; return it if it changed."""
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None or job.state in RunState.FINAL:
                return None
            states = [r.state for r in s.exec(select(Run).where(Run.job_id == job_id))]
            if not states or any(st not in RunState.FINAL for st in states):
                if any(st != RunState.QUEUED for st in states) and job.state == RunState.QUEUED:
                    job.state = RunState.RUNNING
                    s.add(job)
                    s.commit()
                return None
            if all(st in (RunState.SUCCESS, RunState.SKIPPED) for st in states):
                job.state = RunState.SUCCESS
            elif any(st == RunState.TERMINATED for st in states):
                job.state = RunState.TERMINATED
            elif any(st == RunState.FAILED for st in states):
                job.state = RunState.FAILED
            else:
                job.state = RunState.UNREACHABLE
            job.finished_at = utcnow()
            s.add(job)
            s.commit()
            s.refresh(job)
            return job

    def unfinished_runs(self) -> list[Run]:
        """Runs not in a final state (reconciled when a server starts)."""
        with self.session() as s:
            return list(
                s.exec(select(Run).where(col(Run.state).not_in(list(RunState.FINAL))).order_by(col(Run.id)))
            )

    def run_events(self, run_id: int) -> list[RunEvent]:
        """A run's timeline, oldest first."""
        with self.session() as s:
            return list(
                s.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(col(RunEvent.id)))
            )

    def list_runs(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        status: str | None = None,
        host: str | None = None,
        task: str | None = None,
        job_id: int | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs matching the filters, newest first, keyset-paginated by id."""
        with self.session() as s:
            q = select(Run)
            if since is not None:
                q = q.where(Run.created_at >= since)
            if until is not None:
                q = q.where(Run.created_at < until)
            if status:
                q = q.where(col(Run.state).in_(status.split(",")))
            if host:
                q = q.where(Run.host == host)
            if task:
                q = q.where(col(Run.task).contains(task))
            if job_id is not None:
                q = q.where(Run.job_id == job_id)
            if before_id is not None:
                q = q.where(col(Run.id) < before_id)
            q = q.order_by(col(Run.id).desc()).limit(limit)
            return list(s.exec(q))

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
        cur = conn.cursor()
        try:
            if self.is_sqlite:
                cur.execute("SELECT coalesce(max(id), 0) FROM log_line")
                first = cur.fetchone()[0]
                cur.executemany(
                    "INSERT INTO log_line (run_id, seq, ts, stream, level, text) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                cur.execute(
                    "INSERT INTO log_fts(rowid, text) SELECT id, text FROM log_line WHERE id > ?",
                    (first,),
                )
            else:
                cur.executemany(
                    "INSERT INTO log_line (run_id, seq, ts, stream, level, text) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
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
                q = q.where(col(LogLine.text).contains(grep, autoescape=True))
            q = q.order_by(col(LogLine.seq))
            if limit:
                q = q.limit(limit)
            return list(s.exec(q))

    def read_job_lines(self, job_id: int, after_id: int = 0, limit: int = 5000) -> list[LogLine]:
        """Lines of every run of a job in arrival order (by row id), after a row id."""
        with self.session() as s:
            q = (
                select(LogLine)
                .join(Run, col(Run.id) == col(LogLine.run_id))
                .where(Run.job_id == job_id, col(LogLine.id) > after_id)
                .order_by(col(LogLine.id))
                .limit(limit)
            )
            return list(s.exec(q))

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


def dumps(value: Any) -> str:
    """Compact JSON used in text columns."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
