"""What every part of `Store` builds on: its engine, an ORM session, and changing a named row."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, select

from easytask.store import audit as audit_chain
from easytask.store.audit import AuditNote

M = TypeVar("M", bound=SQLModel)


class Queries:
    """The base of `Store`'s query classes (`Store` sets `engine`)."""

    engine: Engine

    def session(self) -> Session:
        """A new ORM session."""
        return Session(self.engine, expire_on_commit=False)

    def update_named(
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
