"""Jobs and their runs as stored: creating them, changing runs, ending jobs; a part of `Store`."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm.instrumentation import manager_of_class
from sqlmodel import Session, col, select

from easytask.store import audit as audit_chain
from easytask.store import statements as sql
from easytask.store.audit import AuditNote
from easytask.store.base import Queries
from easytask.store.models import Job, JobWebhook, Run, RunEvent, RunState, WebhookDelivery, utcnow

RAN_AS = "ran as"  # the timeline event that says whom a run's command ran as
BECOME = "become"  # the timeline event that says whom an agent run asks its agent to become
# Marks of a playbook run, kept as timeline events (their detail says why):
CHANGED = "changed"  # the run changed something (changed_when, or as Ansible's modules say)
IGNORED = "ignored"  # the run failed and its task has ignore_errors: the job does not fail by it
MARKS = (CHANGED, IGNORED)


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


def new_runs(rows: Iterable[dict[str, Any]]) -> list[Run]:
    """Unsaved `Run` objects from their values (every other field its default), for a job's
    runs before `create_job` stores them.

    The same objects `Run(**values)` makes, without its validation and its instrumented
    setattr of every field (about 0.1 ms a run: a fan-out to thousands of hosts made that a
    large part of its submission). The values are taken as they are: the caller's own, of the
    right types.
    """
    manager = manager_of_class(Run)
    fields = Run.model_fields
    plain = {n: f.get_default() for n, f in fields.items() if f.default_factory is None}
    factories = {n: f.default_factory for n, f in fields.items() if f.default_factory is not None}
    runs = []
    for values in rows:
        run = manager.new_instance()
        state = run.__dict__
        state.update(plain)
        for name, factory in factories.items():
            if name not in values:
                state[name] = factory()  # type: ignore[call-arg]
        state.update(values)
        object.__setattr__(run, "__pydantic_fields_set__", set(values))
        object.__setattr__(run, "__pydantic_extra__", None)
        runs.append(run)
    return runs


class RunQueries(Queries):
    """The Store's queries on jobs, runs and a job's webhooks (mixed into `Store`)."""

    owner: str

    if TYPE_CHECKING:

        def _job_lines(
            self,
            conn: Any,
            job_id: int,
            after_id: int,
            limit: int,
            hosts: Collection[str] | None = None,
        ) -> list[Any]: ...

    def create_job(
        self,
        job: Job,
        runs: Sequence[Run],
        audit: AuditNote | None = None,
        notes: Mapping[int, Sequence[tuple[str, str]]] | None = None,
    ) -> tuple[Job, list[Run]]:
        """Insert a job and its runs, each with a `queued` event, in one transaction; with
        `audit`, its audit event too (the job's id added to its detail); with `notes`, further
        timeline events (kind, detail) of the runs at these positions, after their `queued`
        (a run handed to another server from the start says so).

        Plain statements, no ORM unit of work: a client waits on this before its job starts.
        """
        job.server = job.server or self.owner
        with self.engine.begin() as conn:
            values = {name: getattr(job, name) for name in sql.JOB_FIELDS}
            job.id = sql.new_id(conn.execute(sql.INSERT_JOB, values))
            # The runs' fields are read and set in their objects' own dicts, where a model
            # keeps them (`new_runs` fills them so): these objects are in no session (their
            # rows are inserted here), so no change needs tracking, and the instrumented
            # attribute costs ten times as much (0.2 s for a job of 10,000 runs).
            fields = [run.__dict__ for run in runs]
            rows = []
            for values in fields:
                values["job_id"] = job.id
                values["server"] = values["server"] or job.server
                rows.append({name: values[name] for name in sql.RUN_FIELDS})
            if rows:
                # one executemany; the ids are read back in order (one transaction inserting
                # in order numbers its rows in that order)
                conn.execute(sql.INSERT_RUNS, rows)
                ids = conn.execute(sql.RUN_IDS, {"job_id": job.id}).scalars()
                for values, run_id in zip(fields, ids, strict=True):
                    values["id"] = run_id
                now = utcnow()
                events = [
                    {"run_id": v["id"], "at": now, "kind": "queued", "detail": f"host {v['host']}"}
                    for v in fields
                ]
                for i, more in (notes or {}).items():
                    run_id = runs[i].id
                    events += [
                        {"run_id": run_id, "at": now, "kind": kind, "detail": detail}
                        for kind, detail in more
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

    def expand_run(self, run_id: int, stands_for: str, names: Sequence[str]) -> list[Run] | None:
        """Give a queued run that stands for a loop whose items were just rendered (a loop over
        results) its items, in one transaction: the run takes the first item's name, a new
        queued run (same job, host, connection, command) is added for each other item, in
        order. None when the run no longer stands for the loop (already expanded, or ended),
        so a loop is expanded once whichever server gets there first."""
        assert names
        with self.session() as s:
            run = s.get(Run, run_id, with_for_update=True)
            if run is None:
                raise KeyError(run_id)
            if run.task != stands_for or run.state != RunState.QUEUED or run.attempt != 1:
                return None
            total = len(names)
            run.task = names[0]
            s.add(run)
            s.add(RunEvent(run_id=run_id, kind="loop", detail=f"item 1 of {total}: {names[0]}"))
            added = []
            for index, name in enumerate(names[1:], start=2):
                row = Run(
                    job_id=run.job_id,
                    task=name,
                    host=run.host,
                    connection=run.connection,
                    agent=run.agent,
                    command=run.command,
                    server=run.server or self.owner,
                )
                s.add(row)
                s.flush()
                assert row.id is not None
                s.add(
                    RunEvent(
                        run_id=row.id,
                        kind="queued",
                        detail=f"host {row.host}, item {index} of {total} of {stands_for}",
                    )
                )
                added.append(row)
            s.commit()
            for row in (run, *added):
                s.refresh(row)
            return [run, *added]

    def get_job(self, job_id: int) -> Job | None:
        """One job."""
        with self.session() as s:
            return s.get(Job, job_id)

    def job_stream_start(
        self, job_id: int, runs: bool, limit: int, hosts: Collection[str] | None = None
    ) -> tuple[list[Run], dict[int, str], list[Any], Job | None]:
        """What a job's event stream starts with: its runs (if `runs`), their hosts by run id,
        its first `limit` lines (rows as `read_job_lines` gives them), and the job as it is
        after those lines were read; one connection, plain statements (a client waits). With
        `hosts`, only the runs on those hosts and their lines."""
        with self.engine.connect() as conn:
            if runs:
                with Session(conn) as s:
                    q = select(Run).where(Run.job_id == job_id)
                    if hosts is not None:
                        q = q.where(col(Run.host).in_(sorted(hosts)))
                    snapshot = list(s.exec(q.order_by(col(Run.id))))
                on = {r.id or 0: r.host for r in snapshot}
            else:
                snapshot = []
                rows = conn.execute(sql.RUN_HOSTS, {"job_id": job_id})
                on = {row.id: row.host for row in rows if hosts is None or row.host in hosts}
            lines = self._job_lines(conn, job_id, 0, limit, hosts) if limit else []
            found = conn.execute(sql.JOB_ROW, {"job_id": job_id}).first()
            return snapshot, on, lines, Job(**found._mapping) if found else None

    def job_runs(self, job_id: int, hosts: Collection[str] | None = None) -> list[Run]:
        """The runs of a job, in host order of submission (only those on `hosts` if given)."""
        with self.session() as s:
            q = select(Run).where(Run.job_id == job_id)
            if hosts is not None:
                q = q.where(col(Run.host).in_(sorted(hosts)))
            return list(s.exec(q.order_by(col(Run.id))))

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
        ignored: set[int] = set()
        if RunState.FAILED in states:  # a failure that ignore_errors let pass counts as done
            ignored = self._marked(conn, job_id, IGNORED)
            states = [
                RunState.SUCCESS if r.state == RunState.FAILED and r.id in ignored else r.state
                for r in latest.values()
            ]
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
        detail: dict[str, Any] = {"job": job.id, "kind": job.kind, "state": job.state}
        detail["runs"] = counts
        if ignored:  # failed runs the job went past (ignore_errors)
            detail["ignored"] = sum(1 for r in latest.values() if r.id in ignored)
        audit_chain.append(conn, job.submitted_by, "job.finish", "", detail)
        return job

    @staticmethod
    def _marked(conn: Any, job_id: int, kind: str) -> set[int]:
        rows = conn.execute(sql.RUN_NOTES, {"job_id": job_id, "kinds": [kind]})
        return {row.run_id for row in rows}

    def job_run_marks(self, job_id: int) -> dict[int, set[str]]:
        """Run id -> its marks (CHANGED, IGNORED), for a job's runs that have any."""
        with self.engine.connect() as conn:
            marks: dict[int, set[str]] = {}
            for row in conn.execute(sql.RUN_NOTES, {"job_id": job_id, "kinds": list(MARKS)}):
                marks.setdefault(row.run_id, set()).add(row.kind)
            return marks

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

    def job_run_rows(
        self, job_id: int, hosts: Collection[str] | None = None
    ) -> tuple[list[Any], dict[int, str], dict[int, set[str]]]:
        """A job's runs as rows with the fields of `Run`, in order of submission (only those on
        `hosts` if given); run id -> whom its command ran as (its last `ran as` timeline
        event); run id -> its marks (CHANGED, IGNORED), for the runs that have any. One
        connection, plain statements and no model objects: a client waits on this when a job
        of thousands of runs ends (a model object costs ten times a row)."""
        with self.engine.connect() as conn:
            q = sql.JOB_RUNS
            if hosts is not None:
                q = q.where(sql.RUN.c.host.in_(sorted(hosts)))
            rows = list(conn.execute(q, {"job_id": job_id}))
            ran_as: dict[int, str] = {}
            marks: dict[int, set[str]] = {}
            kinds = [RAN_AS, *MARKS]
            for note in conn.execute(sql.RUN_NOTES, {"job_id": job_id, "kinds": kinds}):
                if note.kind == RAN_AS:
                    ran_as[note.run_id] = note.detail
                else:
                    marks.setdefault(note.run_id, set()).add(note.kind)
        return rows, ran_as, marks

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
