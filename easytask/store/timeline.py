"""What the run page's timeline and the host page read: a run's attempts and their events, its
output's density and marked lines, the line printed at a moment, an agent's link history and
recent runs; a part of `Store`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Integer, and_, cast, func, or_
from sqlmodel import col, select

from easytask.store.base import Queries
from easytask.store.models import AuditEvent, LogLine, Run, RunEvent
from easytask.store.pglog import count_of_levels, of_levels

# The audit actions that tell an agent's link and standing: its history on the host page.
LINK_ACTIONS = (
    "agent.online",
    "agent.lost",
    "agent.enroll",
    "agent.reenroll",
    "agent.pending",
    "agent.accept",
    "agent.revoke",
    "agent.refused",
    "agent.delete",
)


def _like_literal(text: str) -> str:
    """`text` for a LIKE pattern with `\\` as its escape character."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class TimelineQueries(Queries):
    """The Store's reads for timelines (mixed into `Store`)."""

    is_sqlite: bool

    def run_attempts(self, run: Run) -> list[Run]:
        """Every attempt of a run's task on its host (the run itself among them), by attempt."""
        with self.session() as s:
            q = select(Run).where(
                Run.job_id == run.job_id, Run.task == run.task, Run.host == run.host
            )
            return list(s.exec(q.order_by(col(Run.attempt), col(Run.id))))

    def events_of_runs(self, run_ids: Sequence[int]) -> list[RunEvent]:
        """The timeline events of some runs, in the order they were recorded."""
        if not run_ids:
            return []
        with self.session() as s:
            q = select(RunEvent).where(col(RunEvent.run_id).in_(list(run_ids)))
            return list(s.exec(q.order_by(col(RunEvent.id))))

    def line_span(self, run_id: int) -> tuple[float, float] | None:
        """Arrival times of a run's first and last stored lines; None without lines."""
        with self.session() as s:
            low, high = s.exec(
                select(func.min(LogLine.ts), func.max(LogLine.ts)).where(LogLine.run_id == run_id)
            ).one()
            return None if low is None else (float(low), float(high))

    def line_density(self, run_id: int, start: float, bucket: float) -> list[tuple[int, int]]:
        """(bucket index, lines) of a run's lines by arrival time, buckets of `bucket` seconds
        from `start`; only buckets holding lines."""
        with self.session() as s:
            offset = (col(LogLine.ts) - start) / bucket
            # SQLite's CAST truncates (times after `start` are positive); PostgreSQL's rounds
            index = cast(offset, Integer) if self.is_sqlite else func.floor(offset)
            q = (
                select(index, func.count())
                .where(LogLine.run_id == run_id, LogLine.ts >= start)
                .group_by(index)
                .order_by(index)
            )
            return [(int(i), int(n)) for i, n in s.exec(q)]

    def level_marks(
        self, run_id: int, levels: Sequence[str], limit: int
    ) -> list[tuple[int, float, str, str]]:
        """(seq, arrival time, level, text) of a run's first `limit` lines of some levels."""
        with self.session() as s:
            q = (
                select(LogLine.seq, LogLine.ts, LogLine.level, LogLine.text)
                .where(LogLine.run_id == run_id, of_levels(self.is_sqlite, levels))
                .order_by(col(LogLine.seq))
                .limit(limit)
            )
            return [(int(seq), float(ts), lv, text) for seq, ts, lv, text in s.exec(q)]

    def line_at(
        self, run_id: int, at: float, levels: Sequence[str] | None = None
    ) -> tuple[int, int] | None:
        """(seq, position in the level-filtered log) of a run's first line (of the levels, when
        given) that arrived at or after `at`, else of its last such line; None if none."""
        with self.session() as s:
            q = select(LogLine.seq).where(LogLine.run_id == run_id)
            if levels:
                q = q.where(of_levels(self.is_sqlite, levels))
            found = s.exec(q.where(LogLine.ts >= at).order_by(col(LogLine.seq)).limit(1)).first()
            if found is None:
                found = s.exec(q.order_by(col(LogLine.seq).desc()).limit(1)).first()
            if found is None:
                return None
            seq = int(found)
            if not levels:
                return seq, seq - 1  # seqs have no gaps
            where = [LogLine.run_id == run_id, LogLine.seq < seq]
            return seq, count_of_levels(s, self.is_sqlite, where, levels, seq - 1)

    def agent_link_events(
        self, name: str, since: datetime | None = None, limit: int = 100
    ) -> list[AuditEvent]:
        """The audit events of an agent's link and standing (online, lost, enrolled, accepted,
        revoked, refused…), newest first."""
        needle = "%" + _like_literal(json.dumps({"agent": name})[1:-1]) + "%"
        with self.session() as s:
            q = select(AuditEvent).where(
                col(AuditEvent.action).in_(LINK_ACTIONS),
                col(AuditEvent.detail).like(needle, escape="\\"),
            )
            if since is not None:
                q = q.where(AuditEvent.at >= since)
            rows = list(s.exec(q.order_by(col(AuditEvent.id).desc()).limit(limit)))
        return [r for r in rows if json.loads(r.detail).get("agent") == name]

    def agentless_last_runs(self, names: list[str]) -> dict[str, Run]:
        """Each named host's newest run made without an agent (ssh, local): its last contact."""
        found: dict[str, Run] = {}
        with self.session() as s:
            for name in names:
                q = select(Run).where(col(Run.host) == name, col(Run.connection) != "agent")
                row = s.exec(q.order_by(col(Run.id).desc()).limit(1)).first()
                if row is not None:
                    found[name] = row
        return found

    def agent_runs(self, name: str, limit: int = 20) -> list[Run]:
        """An agent's most recent runs, newest first."""
        with self.session() as s:
            q = select(Run).where(
                or_(
                    col(Run.agent) == name,
                    and_(col(Run.host) == name, col(Run.connection) == "agent"),
                )
            )
            return list(s.exec(q.order_by(col(Run.id).desc()).limit(limit)))
