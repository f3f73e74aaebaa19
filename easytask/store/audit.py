"""The audit chain: canonical form of an event, appending, verification, and the Store's queries."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col
from sqlmodel import select as model_select

from easytask.store import statements as sql
from easytask.store.models import AuditEvent

GENESIS = "0" * 64
CHAIN_LOCK = 0x6175_6469  # "audi": PostgreSQL advisory lock key of the chain's tail


def canonical(
    event_id: int, at: datetime, actor: str, action: str, source: str, detail: str
) -> str:
    """The exact text that is hashed: sorted keys, no spaces, UTC time in ISO form."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    body = {
        "id": event_id,
        "at": stamp,
        "actor": actor,
        "action": action,
        "source": source,
        "detail": json.loads(detail),
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, text: str) -> str:
    """sha256(prev_hash + canonical json)."""
    return hashlib.sha256((prev_hash + text).encode()).hexdigest()


@dataclass(slots=True)
class AuditNote:
    """An audit event to store with the change it records: who, what, from where, details."""

    actor: str
    action: str
    source: str
    detail: dict[str, Any]


def append_note(conn: Connection, note: AuditNote | None, **known: Any) -> None:
    """Append `note` (if any) in the caller's transaction; `known` (what only the change knows,
    such as a new row's id) is added to its detail."""
    if note is not None:
        append(conn, note.actor, note.action, note.source, {**known, **note.detail})


def append(
    conn: Connection, actor: str, action: str, source: str, detail: dict[str, Any]
) -> AuditEvent:
    """Add one event at the end of the chain, in the caller's transaction (one writer at a time).

    Plain statements, no ORM unit of work: every submitted and finished job appends one, on the
    path a client waits on.
    """
    if conn.dialect.name == "postgresql":
        # Several servers may append at once: the lock, held until the caller commits, keeps
        # the chain a line (SQLite has one writer anyway).
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})
    last = conn.execute(sql.AUDIT_TAIL).scalar()
    prev_hash = last if last is not None else GENESIS
    at = datetime.now(UTC)
    body = json.dumps(detail, sort_keys=True, default=str)
    values: dict[str, Any] = {
        "at": at,
        "actor": actor,
        "action": action,
        "source": source,
        "detail": body,
        "prev_hash": prev_hash,
    }
    inserted = conn.execute(sql.INSERT_AUDIT, {**values, "hash": ""})
    event_id = sql.new_id(inserted)
    event = AuditEvent(id=event_id, **values)
    event.hash = chain_hash(prev_hash, canonical(event_id, at, actor, action, source, body))
    conn.execute(sql.AUDIT_HASH, {"event_id": event_id, "hash": event.hash})
    return event


def verify(session: Session) -> dict[str, Any]:
    """Walk the chain; report the first row that was edited, deleted or inserted out of order."""
    prev_hash = GENESIS
    prev_id = 0
    count = 0
    for event in session.exec(model_select(AuditEvent).order_by(col(AuditEvent.id))):
        assert event.id is not None
        if event.prev_hash != prev_hash:
            problem = (
                "a row before it was deleted or replaced"
                if event.id != prev_id + 1
                else "it does not follow the row before it (inserted out of order?)"
            )
            return {
                "ok": False,
                "rows": count,
                "bad_row": event.id,
                "problem": f"row {event.id}: chain broken: {problem}",
            }
        if event.id != prev_id + 1:
            return {
                "ok": False,
                "rows": count,
                "bad_row": event.id,
                "problem": f"row {event.id}: rows {prev_id + 1}..{event.id - 1} are missing",
            }
        text = canonical(event.id, event.at, event.actor, event.action, event.source, event.detail)
        if chain_hash(prev_hash, text) != event.hash:
            return {
                "ok": False,
                "rows": count,
                "bad_row": event.id,
                "problem": f"row {event.id}: contents do not match its hash (edited)",
            }
        prev_hash, prev_id = event.hash, event.id
        count += 1
    return {"ok": True, "rows": count, "head": prev_hash}


class AuditQueries:
    """The Store's queries on the audit chain (mixed into `Store`)."""

    engine: Engine

    if TYPE_CHECKING:

        def session(self) -> Session: ...

    def audit(self, actor: str, action: str, source: str, detail: dict[str, Any]) -> AuditEvent:
        """Append an event to the audit chain."""
        with self.engine.begin() as conn:
            return append(conn, actor, action, source, detail)

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
            q = model_select(AuditEvent)
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
            return verify(s)
