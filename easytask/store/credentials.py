"""Credentials: sealed values by name, their metadata, re-sealing them all; a part of `Store`.

The store never sees a value in clear: the service seals and opens them (`easytask.sealing`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from sqlmodel import col, select

from easytask.store import audit as audit_chain
from easytask.store.audit import AuditNote
from easytask.store.base import Queries
from easytask.store.models import Credential, utcnow


class CredentialQueries(Queries):
    """The Store's queries on credentials (mixed into `Store`; database thread)."""

    def list_credentials(self) -> list[Credential]:
        """Every credential, by name."""
        with self.session() as s:
            return list(s.exec(select(Credential).order_by(col(Credential.name))))

    def get_credentials(self, names: Iterable[str]) -> dict[str, Credential]:
        """The credentials of these names that exist."""
        wanted = sorted(set(names))
        if not wanted:
            return {}
        with self.session() as s:
            rows = s.exec(select(Credential).where(col(Credential.name).in_(wanted)))
            return {row.name: row for row in rows}

    def put_credential(
        self,
        name: str,
        kind: str,
        scope: str,
        key_id: str,
        sealed: str,
        actor: str,
        audit: AuditNote,
    ) -> tuple[Credential, bool]:
        """Create or replace a credential with its audit event in the same transaction; the row
        and whether it was created."""
        with self.session() as s:
            row = s.exec(select(Credential).where(Credential.name == name)).first()
            created = row is None
            now = utcnow()
            if row is None:
                row = Credential(name=name, created_by=actor, created_at=now)
            row.kind, row.scope, row.key_id, row.sealed = kind, scope, key_id, sealed
            row.updated_by, row.updated_at = actor, now
            s.add(row)
            audit_chain.append_note(s.connection(), audit, created=created)
            s.commit()
            s.refresh(row)
            return row, created

    def delete_credential(self, name: str, audit: AuditNote) -> Credential | None:
        """Delete a credential with its audit event in the same transaction; None if none."""
        with self.session() as s:
            row = s.exec(select(Credential).where(Credential.name == name)).first()
            if row is None:
                return None
            s.delete(row)
            audit_chain.append_note(s.connection(), audit, kind=row.kind)
            s.commit()
            return row

    def reseal_credentials(
        self, reseal: Callable[[Credential], tuple[str, str]], audit: AuditNote
    ) -> int:
        """Seal every credential again (`reseal` gives its new key id and sealed value), all in
        one transaction with the audit event: all of them change, or none; how many."""
        with self.session() as s:
            rows = list(s.exec(select(Credential).with_for_update()))
            for row in rows:
                row.key_id, row.sealed = reseal(row)
                s.add(row)
            audit_chain.append_note(s.connection(), audit, count=len(rows))
            s.commit()
            return len(rows)

    def touch_credentials(self, names: Iterable[str], user: str) -> None:
        """Note that these credentials were used now, by `user` (the audit event of the job
        that used them names them)."""
        wanted = sorted(set(names))
        if not wanted:
            return
        with self.session() as s:
            now = utcnow()
            for row in s.exec(select(Credential).where(col(Credential.name).in_(wanted))):
                row.last_used_at, row.last_used_by = now, user
                s.add(row)
            s.commit()
