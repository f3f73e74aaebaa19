"""Schedules as stored: their rows and the record of every time one fired; a part of `Store`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import delete
from sqlmodel import SQLModel, col, select

from easytask.store import audit as audit_chain
from easytask.store.audit import AuditNote
from easytask.store.base import Queries
from easytask.store.models import Schedule, ScheduleFire, utcnow

M = TypeVar("M", bound=SQLModel)


class ScheduleQueries(Queries):
    """The Store's queries on schedules and their fires (mixed into `Store`)."""

    def upsert_schedule(self, name: str, path: str, cron: str, tz: str, catch_up: str) -> Schedule:
        """Create or refresh a schedule from a playbook file; `enabled` is left as it was."""
        with self.session() as s:
            row = s.exec(select(Schedule).where(Schedule.name == name)).first()
            if row is None:
                row = Schedule(name=name, path=path, cron=cron, tz=tz, catch_up=catch_up)
            elif row.origin != "file":
                return row  # a stored schedule of that name: the file does not replace it
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
        return self.update_named(Schedule, name, fields, audit)

    def create_schedule(self, row: Schedule, audit: AuditNote) -> Schedule | None:
        """Store a new schedule with its audit event; None if the name is taken."""
        with self.session() as s:
            if s.exec(select(Schedule).where(Schedule.name == row.name)).first() is not None:
                return None
            s.add(row)
            s.flush()
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            s.refresh(row)
            return row

    def delete_schedule(self, name: str, audit: AuditNote) -> bool:
        """Delete a schedule and its fire records with the audit event; False if none."""
        with self.session() as s:
            row = s.exec(select(Schedule).where(Schedule.name == name)).first()
            if row is None:
                return False
            s.exec(delete(ScheduleFire).where(col(ScheduleFire.schedule_id) == row.id))
            s.delete(row)
            audit_chain.append_note(s.connection(), audit)
            s.commit()
            return True

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
