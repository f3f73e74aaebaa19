"""Engine, schema and the Store: every query, run on one dedicated database thread.

The Store's queries on log lines live in `lines.py`, on agents, users and tokens in
`identities.py`; the statements on the path a waiting client is on in `statements.py`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import bindparam, event, func, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlmodel import Session, SQLModel, col, create_engine, select

from easytask.store import audit as audit_chain
from easytask.store import schema
from easytask.store import statements as sql
from easytask.store.audit import AuditNote
from easytask.store.identities import IdentityQueries
from easytask.store.lines import LineQueries
from easytask.store.models import (
    AuditEvent,
    Job,
    JobWebhook,
    LogLine,
    Run,
    RunEvent,
    RunState,
    Schedule,
    ScheduleFire,
    WebhookDelivery,
    utcnow,
)

T = TypeVar("T")
PING_AFTER_IDLE = 5.0  # seconds a PostgreSQL connection rests in the pool before it is checked
M = TypeVar("M", bound=SQLModel)


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


class Store(IdentityQueries, LineQueries):
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
            audit_chain.append_note(conn, audit, job=job.id)
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

    def update_schedule(
        self, name: str, audit: AuditNote | None = None, **fields: Any
    ) -> Schedule | None:
        """Change a schedule's fields (enabled, next_fire, last_fire, last_job); with `audit`,
        its audit event in the same transaction."""
        return self._update_named(Schedule, name, fields, audit)

    def _update_named(
        self, model: type[M], name: str, fields: dict[str, Any], audit: AuditNote | None = None
    ) -> M | None:
        """Set fields of the row of `model` with this name (and append `audit` in the same
        transaction); None if there is none."""
        with self.session() as s:
            row = s.exec(select(model).where(model.name == name)).first()  # type: ignore[attr-defined]
            if row is None:
                return None
            for key, value in fields.items():
                setattr(row, key, value)
            s.add(row)
            audit_chain.append_note(s.connection(), audit)
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

    # -- console: jobs and run history ------------------------------------

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


def dumps(value: Any) -> str:
    """Compact JSON used in text columns."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, default=str)
