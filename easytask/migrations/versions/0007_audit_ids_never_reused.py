"""Audit event ids are never reused: on SQLite the table gets AUTOINCREMENT, so rows deleted
from the end of the chain leave their ids taken (PostgreSQL's sequence never gives one back).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _recreate(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "audit_event", recreate="always", table_kwargs={"sqlite_autoincrement": autoincrement}
    ):
        pass


def upgrade() -> None:
    _recreate(True)
    if op.get_bind().dialect.name == "sqlite":
        # the highest id ever given is the highest id there now
        op.execute(sa.text("DELETE FROM sqlite_sequence WHERE name = 'audit_event'"))
        op.execute(
            sa.text(
                "INSERT INTO sqlite_sequence (name, seq) "
                "SELECT 'audit_event', COALESCE(MAX(id), 0) FROM audit_event"
            )
        )


def downgrade() -> None:
    _recreate(False)
