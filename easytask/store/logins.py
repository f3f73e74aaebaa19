"""Sign-in attempts counted in the database: reserved before a password is checked.

A sign-in first reserves an attempt against its keys (`user:NAME` and `addr:ADDRESS`): in one
transaction the recent attempts of each key are counted and, when every key is under the limit,
one attempt is stored for each.  On PostgreSQL a transaction-scoped advisory lock per key makes
concurrent reservations, on this server or another of the same database, take turns; SQLite has
one writer thread.  So no more than the limit of attempts per key are ever checked in a window.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, delete, text
from sqlmodel import col, func, select

from easytask.store.base import Queries
from easytask.store.models import LoginAttempt, as_utc, utcnow

if TYPE_CHECKING:
    pass

LOCK_CLASS = 0x6C6F_676E  # "logn": first half of the PostgreSQL advisory lock of a key
PRUNE_EVERY = 60.0  # seconds between sweeps of attempts too old to count anywhere


def key_lock(key: str) -> int:
    """The second half of a key's advisory lock: 32 signed bits of its SHA-256."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big", signed=True)


def lock_keys(conn: Connection, keys: Sequence[str]) -> None:
    """Hold each key's lock until the transaction ends (in one order, so two never deadlock)."""
    if conn.dialect.name != "postgresql":
        return
    for lock in sorted({key_lock(k) for k in keys}):
        conn.execute(
            text("SELECT pg_advisory_xact_lock(:cls, :obj)"), {"cls": LOCK_CLASS, "obj": lock}
        )


class LoginQueries(Queries):
    """Reserving, releasing and pruning sign-in attempts (mixed into the Store)."""

    _login_pruned = 0.0

    def reserve_login(
        self, keys: Sequence[str], limit: int, window: float
    ) -> tuple[int, list[int]]:
        """Count an attempt against every key if each has fewer than `limit` in the last `window`
        seconds: (0, ids of the stored attempts); else (seconds to wait, []), nothing stored."""
        now = utcnow()
        since = now - timedelta(seconds=window)
        with self.session() as s:
            lock_keys(s.connection(), keys)
            wait = 0.0
            for key in keys:
                # the limit-th newest attempt of the key ages out first: then one may try again
                oldest = s.exec(
                    select(LoginAttempt.at)
                    .where(LoginAttempt.key == key, col(LoginAttempt.at) > since)
                    .order_by(col(LoginAttempt.at).desc())
                    .offset(limit - 1)
                    .limit(1)
                ).first()
                if oldest is not None:
                    wait = max(wait, window - (now - as_utc(oldest)).total_seconds())
            if wait > 0:
                return max(1, math.ceil(wait)), []
            rows = [LoginAttempt(key=key, at=now) for key in keys]
            s.add_all(rows)
            s.flush()
            ids = [row.id for row in rows if row.id is not None]
            if time.monotonic() - self._login_pruned > PRUNE_EVERY:
                self._login_pruned = time.monotonic()
                s.execute(delete(LoginAttempt).where(col(LoginAttempt.at) <= since))
            s.commit()
            return 0, ids

    def release_login(self, ids: Sequence[int], clear: Sequence[str] = ()) -> None:
        """Forget the attempts of a sign-in that succeeded, and every attempt of the `clear` keys."""
        with self.session() as s:
            lock_keys(s.connection(), clear)
            if ids:
                s.execute(delete(LoginAttempt).where(col(LoginAttempt.id).in_(list(ids))))
            if clear:
                s.execute(delete(LoginAttempt).where(col(LoginAttempt.key).in_(list(clear))))
            s.commit()

    def login_attempts(self, key: str) -> int:
        """How many attempts are stored for a key (for tests and operators)."""
        with self.session() as s:
            count = s.exec(
                select(func.count()).select_from(LoginAttempt).where(LoginAttempt.key == key)
            ).one()
            return int(count)
