"""Past jobs and runs: listing, counting, searching and pruning them; a part of `Store`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, delete, exists, func, or_, text
from sqlmodel import col, select

from easytask.store.base import Queries
from easytask.store.models import Job, LogLine, Run, RunEvent, RunState
from easytask.store.pglog import EPOCH, day_of, existing_weeks, partition_names


def on_hosts(hosts: Collection[str]) -> Any:
    """Runs on one of these hosts (none when empty): the one place a reader's scope becomes SQL."""
    return col(Run.host).in_(sorted(hosts))


def host_matches(host: str) -> Any:
    """Runs on a host by name, `*` and `?` as wildcards."""
    if "*" in host or "?" in host:
        pattern = host.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = pattern.replace("*", "%").replace("?", "_")
        return col(Run.host).like(pattern, escape="\\")
    return Run.host == host


class HistoryQueries(Queries):
    """The Store's queries over many jobs and runs (mixed into `Store`)."""

    is_sqlite: bool
    _run_day: dict[int, int]
    _weeks: set[int]

    if TYPE_CHECKING:

        def _runs_with_text(
            self, needle: str, since: datetime | None = None, until: datetime | None = None
        ) -> Any: ...

    def list_jobs(
        self,
        *,
        states: Sequence[str] | None = None,
        limit: int = 20,
        hosts: Collection[str] | None = None,
    ) -> list[Job]:
        """Jobs, newest first, optionally only those in some states; with `hosts`, only jobs
        with a run on one of them (a scoped reader's view, see `service.reading`)."""
        with self.session() as s:
            q = select(Job)
            if states:
                q = q.where(col(Job.state).in_(list(states)))
            if hosts is not None:
                q = q.where(col(Job.id).in_(select(Run.job_id).where(on_hosts(hosts))))
            return list(s.exec(q.order_by(col(Job.id).desc()).limit(limit)))

    def find_jobs(
        self,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        status: Sequence[str] | None = None,
        host: str | None = None,
        task: str | None = None,
        user: str | None = None,
        kind: str | None = None,
        text: str | None = None,
        before_id: int | None = None,
        after_id: int | None = None,
        limit: int = 50,
        hosts: Collection[str] | None = None,
    ) -> list[Job]:
        """Jobs newest first, keyset-paginated by id (before or after), with the runs list's
        filters: `status` is the job's state; `host`, `task` and `text` keep the jobs with a run
        that matches (as `find_runs`); `task` also matches the job's name; with `hosts`, only
        jobs with a run on one of them."""
        with self.session() as s:
            q = select(Job)
            if since is not None:
                q = q.where(Job.created_at >= since)
            if until is not None:
                q = q.where(Job.created_at < until)
            if status:
                q = q.where(col(Job.state).in_(list(status)))
            if kind:
                q = q.where(Job.kind == kind)
            if user:
                q = q.where(Job.submitted_by == user)
            runs = select(Run.job_id)
            narrowed = False
            if host:
                runs = runs.where(host_matches(host))
                narrowed = True
            if text:
                runs = runs.where(col(Run.id).in_(self._runs_with_text(text)))
                narrowed = True
            if hosts is not None:
                runs = runs.where(on_hosts(hosts))
                narrowed = True
            if narrowed:
                q = q.where(col(Job.id).in_(runs))
            if task:
                in_runs = select(Run.job_id).where(
                    col(Run.task).icontains(task, autoescape=True)
                    | col(Run.command).icontains(task, autoescape=True)
                )
                q = q.where(
                    col(Job.name).icontains(task, autoescape=True)
                    | col(Job.command).icontains(task, autoescape=True)
                    | col(Job.id).in_(in_runs)
                )
            if before_id is not None:
                q = q.where(col(Job.id) < before_id)
            if after_id is not None:
                q = q.where(col(Job.id) > after_id).order_by(col(Job.id)).limit(limit)
                rows = list(s.exec(q))
                rows.reverse()
                return rows
            return list(s.exec(q.order_by(col(Job.id).desc()).limit(limit)))

    def run_state_counts(self, hosts: Collection[str] | None = None) -> dict[str, int]:
        """How many runs are in each state, over the whole store (only on `hosts` if given)."""
        with self.session() as s:
            q = select(Run.state, func.count())
            if hosts is not None:
                q = q.where(on_hosts(hosts))
            q = q.group_by(col(Run.state))
            return {state: int(count) for state, count in s.exec(q)}

    def job_state_counts(
        self, job_ids: Sequence[int], hosts: Collection[str] | None = None
    ) -> dict[int, dict[str, int]]:
        """For each job, how many of its runs are in each state (only runs on `hosts` if
        given)."""
        out: dict[int, dict[str, int]] = {jid: {} for jid in job_ids}
        if not job_ids:
            return out
        with self.session() as s:
            q = select(Run.job_id, Run.state, func.count()).where(
                col(Run.job_id).in_(list(job_ids))
            )
            if hosts is not None:
                q = q.where(on_hosts(hosts))
            q = q.group_by(col(Run.job_id), col(Run.state))
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
        hosts: Collection[str] | None = None,
    ) -> list[tuple[Run, str]]:
        """Runs with who submitted them, newest first, keyset-paginated by id (before or after).

        `host` may hold `*`/`?` wildcards; `task` matches the task name or the command; `text`
        is searched in the output as one phrase (FTS5 on SQLite), so no input is a syntax error.
        With `hosts`, only runs on those hosts (a scoped reader's view, see `service.reading`).
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
                q = q.where(host_matches(host))
            if hosts is not None:
                q = q.where(on_hosts(hosts))
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
                q = q.where(col(Run.id).in_(self._runs_with_text(text, since, until)))
            if before_id is not None:
                q = q.where(col(Run.id) < before_id)
            if after_id is not None:
                q = q.where(col(Run.id) > after_id).order_by(col(Run.id)).limit(limit)
                rows = list(s.exec(q))
                rows.reverse()
                return [(run, by) for run, by in rows]
            q = q.order_by(col(Run.id).desc()).limit(limit)
            return [(run, by) for run, by in s.exec(q)]

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

    def prune_weeks(
        self, ok_before: datetime | None, failed_before: datetime | None
    ) -> dict[str, int]:
        """PostgreSQL: for each week that has ended and whose runs are all past retention, delete
        those runs (with their timeline, and the jobs left without runs) and drop the week's
        log partitions whole, one transaction per week. Weeks with a run to keep are left to
        `prune_batch`. Returns what went, and how many weeks."""
        from sqlalchemy import and_, not_

        out = {"jobs": 0, "runs": 0, "lines": 0, "weeks": 0}
        if self.is_sqlite or (ok_before is None and failed_before is None):
            return out
        cand = self._prunable(ok_before, failed_before)
        today = day_of(datetime.now(UTC))
        with self.session() as s:
            weeks = sorted(existing_weeks(s.connection().connection.driver_connection))
            s.commit()
            for week in weeks:
                if week + 7 > today:
                    break
                start = EPOCH + timedelta(days=week)
                end = start + timedelta(days=7)
                in_week = and_(col(Run.created_at) >= start, col(Run.created_at) < end)
                kept = s.exec(select(func.count()).select_from(Run).where(in_week, not_(cand)))
                if kept.one():
                    continue
                rows = list(s.exec(select(Run.id, Run.job_id).where(in_week)))
                run_ids = [int(r[0] or 0) for r in rows]
                job_ids = sorted({r[1] for r in rows})
                lines_table, chunks_table = partition_names(week)
                conn = s.connection()
                lines = conn.execute(text(f"SELECT count(*) FROM {lines_table}")).scalar()
                conn.execute(text(f"DROP TABLE {lines_table}, {chunks_table}"))
                for i in range(0, len(run_ids), 1000):
                    ids = run_ids[i : i + 1000]
                    conn.execute(delete(RunEvent).where(col(RunEvent.run_id).in_(ids)))
                    conn.execute(delete(Run).where(col(Run.id).in_(ids)))
                for i in range(0, len(job_ids), 1000):
                    ids = job_ids[i : i + 1000]
                    jobs = conn.execute(
                        delete(Job).where(
                            col(Job.id).in_(ids),
                            ~exists().where(col(Run.job_id) == col(Job.id)),
                        )
                    ).rowcount
                    out["jobs"] += int(jobs or 0)
                s.commit()
                self._weeks.discard(week)
                self._run_day.clear()
                out["runs"] += len(run_ids)
                out["lines"] += int(lines or 0)
                out["weeks"] += 1
        return out

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
            else:
                run("DELETE FROM log_chunk WHERE run_id IN :ids", run_ids)
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

    def file_refs(
        self, run_ids: Sequence[int], needles: Sequence[str]
    ) -> tuple[set[int], set[str]]:
        """For retention's sweep of the state dir: of `run_ids`, those that still have a run
        row; of `needles` (upload ids, bundle paths), those some job's `vars` still holds."""
        runs: set[int] = set()
        held: set[str] = set()
        with self.session() as s:
            for i in range(0, len(run_ids), 500):
                ids = list(run_ids[i : i + 500])
                runs.update(int(r or 0) for r in s.exec(select(Run.id).where(col(Run.id).in_(ids))))
            for i in range(0, len(needles), 50):
                some = list(needles[i : i + 50])
                q = select(Job.vars).where(
                    or_(*(col(Job.vars).contains(n, autoescape=True) for n in some))
                )
                for text_ in s.exec(q):
                    held.update(n for n in some if n in (text_ or ""))
        return runs, held
