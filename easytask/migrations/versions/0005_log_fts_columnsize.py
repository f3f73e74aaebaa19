"""The log search index (SQLite) keeps no per-line token counts, which nothing reads: one b-tree
insert less for every stored line.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_FTS = "CREATE VIRTUAL TABLE log_fts USING fts5(text, content='log_line', content_rowid='id'{})"


def _recreate(options: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return  # PostgreSQL searches through a trigram index on log_line itself
    op.execute("DROP TABLE IF EXISTS log_fts")
    op.execute(_FTS.format(options))
    # index every stored line again (the content table stays as it is)
    op.execute("INSERT INTO log_fts(log_fts) VALUES ('rebuild')")


def upgrade() -> None:
    _recreate(", columnsize=0")


def downgrade() -> None:
    _recreate("")
