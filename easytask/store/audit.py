"""The audit chain: canonical form of an event, appending, verification, and the Store's queries.

A row's hash is `hmac:KEYID:` + HMAC-SHA256 under the chain's key (outside the database, see
`easytask.store.checkpoints`) of prev_hash + canonical json; rows written before the key existed
keep a plain sha256 and verify as such, up to the last one a signed checkpoint names.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, select, text
from sqlalchemy.engine import Engine
from sqlmodel import Session, col
from sqlmodel import select as model_select

from easytask.store import statements as sql
from easytask.store.checkpoints import Checkpoint
from easytask.store.models import AuditEvent

GENESIS = "0" * 64
CHAIN_LOCK = 0x6175_6469  # "audi": PostgreSQL advisory lock key of the chain's tail
KEYED = "hmac:"  # the mark of a row hashed with the chain's key
# The chain key of each open database (set by the server): every append on it is keyed.
KEYS: weakref.WeakKeyDictionary[Engine, bytes] = weakref.WeakKeyDictionary()


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


def key_id(key: bytes) -> str:
    """A short fingerprint of the chain's key, written in each keyed row's hash."""
    return hashlib.sha256(b"easytask audit key " + key).hexdigest()[:8]


def keyed_hash(key: bytes, prev_hash: str, text: str) -> str:
    """`hmac:KEYID:` + HMAC-SHA256(key, prev_hash + canonical json)."""
    digest = hmac.new(key, (prev_hash + text).encode(), hashlib.sha256).hexdigest()
    return f"{KEYED}{key_id(key)}:{digest}"


def hashed_with_another_key(key: bytes, row_hash: str) -> bool:
    """Whether a keyed row's hash names a key other than `key`."""
    return row_hash.startswith(KEYED) and not row_hash.startswith(f"{KEYED}{key_id(key)}:")


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


def append_notes(conn: Connection, notes: Sequence[tuple[AuditNote, dict[str, Any]]]) -> None:
    """Append many notes in the caller's transaction, in order, each with what only its change
    knows (see `append_note`): the chain's lock taken and its tail read once for them all."""
    append_many(
        conn,
        [(n.actor, n.action, n.source, {**known, **n.detail}) for n, known in notes],
    )


def append(
    conn: Connection, actor: str, action: str, source: str, detail: dict[str, Any]
) -> AuditEvent:
    """Add one event at the end of the chain, in the caller's transaction (one writer at a time).

    Plain statements, no ORM unit of work: every submitted and finished job appends one, on the
    path a client waits on.
    """
    return append_many(conn, [(actor, action, source, detail)])[0]


def append_many(
    conn: Connection, events: Sequence[tuple[str, str, str, dict[str, Any]]]
) -> list[AuditEvent]:
    """Add events (actor, action, source, detail) at the end of the chain, in order, in the
    caller's transaction: the chain's lock and its tail once for them all.

    On PostgreSQL the rows' ids are drawn from the table's sequence with the tail, under the
    lock (no other writer draws meanwhile: the ids follow each other), so each row goes in
    with its hash, all in one statement; on SQLite (one writer) each row is inserted and then
    hashed with the id it got.
    """
    if not events:
        return []
    at = datetime.now(UTC)
    key = KEYS.get(conn.engine)
    out: list[AuditEvent] = []
    if conn.dialect.name == "postgresql":
        # Several servers may append at once: the lock, held until the caller commits, keeps
        # the chain a line (SQLite has one writer anyway).
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})
        drawn = conn.execute(_TAIL_AND_IDS, {"n": len(events)}).all()
        prev_hash = drawn[0][0] if drawn[0][0] is not None else GENESIS
        for (actor, action, source, detail), event_id in zip(
            events, sorted(int(row[1]) for row in drawn), strict=True
        ):
            body = json.dumps(detail, sort_keys=True, default=str)
            event = _chained(key, event_id, prev_hash, at, actor, action, source, body)
            out.append(event)
            prev_hash = event.hash
        conn.execute(sql.INSERT_AUDIT, [event.model_dump() for event in out])
        return out
    last = conn.execute(sql.AUDIT_TAIL).scalar()
    prev_hash = last if last is not None else GENESIS
    for actor, action, source, detail in events:
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
        event = _chained(key, sql.new_id(inserted), prev_hash, at, actor, action, source, body)
        conn.execute(sql.AUDIT_HASH, {"event_id": event.id, "hash": event.hash})
        out.append(event)
        prev_hash = event.hash
    return out


def _chained(
    key: bytes | None,
    event_id: int,
    prev_hash: str,
    at: datetime,
    actor: str,
    action: str,
    source: str,
    body: str,
) -> AuditEvent:
    """The row of one event with its id and its detail as stored (`body`, JSON), after the row
    whose hash is `prev_hash`."""
    signed = canonical(event_id, at, actor, action, source, body)
    digest = keyed_hash(key, prev_hash, signed) if key else chain_hash(prev_hash, signed)
    return AuditEvent(
        id=event_id,
        at=at,
        actor=actor,
        action=action,
        source=source,
        detail=body,
        prev_hash=prev_hash,
        hash=digest,
    )


# the chain's tail and `n` new ids of its table (on PostgreSQL; under the chain's lock)
_TAIL_AND_IDS = text(
    "SELECT (SELECT hash FROM audit_event ORDER BY id DESC LIMIT 1),"
    " nextval(pg_get_serial_sequence('audit_event', 'id'))"
    " FROM generate_series(1, :n)"
)


@dataclass(slots=True)
class ChainPoint:
    """How far a walk of the chain got with every row good: the last row's id and hash, the rows
    up to it, whether a keyed row was among them, and the hashes of the rows checkpoints name
    (so a later walk from here checks new checkpoints without reading old rows again)."""

    last_id: int = 0
    last_hash: str = GENESIS
    count: int = 0
    keyed: bool = False
    heads: dict[int, str] = field(default_factory=dict)


def verify(
    session: Session,
    key: bytes | None = None,
    checkpoints: list[Checkpoint] | None = None,
    since: ChainPoint | None = None,
) -> dict[str, Any]:
    """Walk the chain; report the first row that was edited, deleted or inserted out of order,
    then any checkpoint whose head is gone or changed (the end truncated, the chain rewritten).

    With `since` (a point an earlier walk reached) only the rows after it are read: that row
    must still be there with the same hash and the same number of rows up to it (two look-ups),
    so a truncation or a row deleted or inserted before it shows; an edit of a row before it
    shows at the next whole walk. The result's `point` is where the walk got to."""
    checkpoints = checkpoints or []
    # rows up to here may be plain sha256 (written before the key); none after
    plain_until = min((c.plain_until for c in checkpoints), default=None)
    wanted = {c.head_id for c in checkpoints}
    start = since or ChainPoint()
    point = ChainPoint(start.last_id, start.last_hash, start.count, start.keyed, dict(start.heads))
    conn = session.connection()

    def broken(row: int, problem: str) -> dict[str, Any]:
        return {
            "ok": False,
            "rows": point.count,
            "bad_row": row,
            "problem": f"row {row}: {problem}",
        }

    if start.last_id:
        found = conn.execute(_ROW_HASH, {"id": start.last_id}).scalar()
        if found is None:
            return broken(start.last_id, "deleted after it was verified (rows gone from the chain)")
        if found != start.last_hash:
            return broken(start.last_id, "its hash changed after it was verified (rewritten)")
        count = conn.execute(sql.AUDIT_COUNT, {"head": start.last_id}).scalar() or 0
        if count != start.count:
            return broken(
                start.last_id,
                f"{count} rows up to it, {start.count} when it was verified "
                "(rows deleted or inserted before it)",
            )
        missing = [h for h in wanted if 0 < h <= start.last_id and h not in point.heads]
        for i in range(0, len(missing), 500):
            chunk = missing[i : i + 500]
            rows = conn.execute(_ROW_HASHES, {"ids": chunk})
            point.heads.update({int(r[0]): str(r[1]) for r in rows})
    prev_hash, prev_id = point.last_hash, point.last_id
    rows = conn.execution_options(yield_per=2000).execute(_ROWS_AFTER, {"after": start.last_id})
    for event_id, at, actor, action, source, detail, row_prev, row_hash in rows:
        if row_prev != prev_hash:
            problem = (
                "a row before it was deleted or replaced"
                if event_id != prev_id + 1
                else "it does not follow the row before it (inserted out of order?)"
            )
            return broken(event_id, f"chain broken: {problem}")
        if event_id != prev_id + 1:
            return broken(event_id, f"rows {prev_id + 1}..{event_id - 1} are missing")
        signed = canonical(event_id, at, actor, action, source, detail)
        if row_hash.startswith(KEYED):
            if key is None:
                return broken(event_id, "hashed with the audit key, which this server lacks")
            if hashed_with_another_key(key, row_hash):
                return broken(
                    event_id,
                    f"hashed with another audit key ({row_hash.split(':')[1]}, this server's "
                    f"is {key_id(key)}): servers sharing a database share one key file",
                )
            good = hmac.compare_digest(keyed_hash(key, prev_hash, signed), row_hash)
            point.keyed = True
        elif point.keyed or (plain_until is not None and event_id > plain_until):
            return broken(event_id, "not hashed with the audit key (the chain was rewritten)")
        else:
            good = chain_hash(prev_hash, signed) == row_hash
        if not good:
            return broken(event_id, "contents do not match its hash (edited)")
        if event_id in wanted:
            point.heads[event_id] = row_hash
        prev_hash, prev_id = row_hash, event_id
        point.last_id, point.last_hash = event_id, row_hash
        point.count += 1
    count = point.count
    for check in sorted(checkpoints, key=lambda c: (c.head_id, c.count), reverse=True):
        if check.head_id > prev_id or check.count > count:
            return {
                "ok": False,
                "rows": count,
                "bad_row": prev_id,
                "problem": f"truncated: the chain ends at row {prev_id} ({count} rows) but the "
                f"{check.describe()} recorded more: rows were deleted from its end",
            }
        if check.head_id and point.heads.get(check.head_id) != check.head_hash:
            return broken(
                check.head_id,
                f"differs from the {check.describe()} (the chain was rewritten)",
            )
    return {
        "ok": True,
        "rows": count,
        "head": prev_hash,
        "checkpoints": len(checkpoints),
        "point": point,
    }


_ROW_HASH = select(sql.AUDIT.c.hash).where(sql.AUDIT.c.id == bindparam("id"))
_ROW_HASHES = select(sql.AUDIT.c.id, sql.AUDIT.c.hash).where(
    sql.AUDIT.c.id.in_(bindparam("ids", expanding=True))
)
_ROWS_AFTER = (
    select(
        sql.AUDIT.c.id,
        sql.AUDIT.c.at,
        sql.AUDIT.c.actor,
        sql.AUDIT.c.action,
        sql.AUDIT.c.source,
        sql.AUDIT.c.detail,
        sql.AUDIT.c.prev_hash,
        sql.AUDIT.c.hash,
    )
    .where(sql.AUDIT.c.id > bindparam("after"))
    .order_by(sql.AUDIT.c.id)
)


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

    def use_audit_key(self, key: bytes) -> None:
        """Hash every event appended from now on with `key` (the chain's HMAC key)."""
        KEYS[self.engine] = key

    def audit_verify(
        self, checkpoints: list[Checkpoint] | None = None, since: ChainPoint | None = None
    ) -> dict[str, Any]:
        """Walk the audit chain with its key, against signed checkpoints, from the start or from
        a point an earlier walk reached (see `verify`)."""
        with self.session() as s:
            return verify(s, KEYS.get(self.engine), checkpoints, since)

    def audit_head(self) -> tuple[int, str]:
        """(id, hash) of the chain's last row: one look-up by primary key."""
        with self.engine.connect() as conn:
            head = conn.execute(sql.AUDIT_HEAD).first()
        return (0, GENESIS) if head is None else (int(head[0]), str(head[1]))

    def audit_tally(self, head_id: int, plain_until: int | None) -> tuple[int, int]:
        """(rows up to `head_id`, last of them hashed without the key); the second is looked for
        (a scan) only when `plain_until` is not already known."""
        with self.engine.connect() as conn:
            count = conn.execute(sql.AUDIT_COUNT, {"head": head_id}).scalar() or 0
            if plain_until is None:
                found = conn.execute(
                    sql.AUDIT_LAST_PLAIN, {"mark": KEYED + "%", "head": head_id}
                ).scalar()
                plain_until = int(found or 0)
        return int(count), plain_until
