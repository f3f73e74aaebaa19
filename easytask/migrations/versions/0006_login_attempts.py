"""Sign-in attempts are counted in the database: the limit holds across restarts, concurrent
attempts and every server of one database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "login_attempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_attempt_key_at", "login_attempt", ["key", "at"])
    op.create_index("ix_login_attempt_at", "login_attempt", ["at"])


def downgrade() -> None:
    op.drop_index("ix_login_attempt_at", table_name="login_attempt")
    op.drop_index("ix_login_attempt_key_at", table_name="login_attempt")
    op.drop_table("login_attempt")
