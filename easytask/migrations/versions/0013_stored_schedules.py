"""Schedules stored in the database (made through the API and the console).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("schedule") as batch:
        batch.add_column(sa.Column("origin", sa.String(), nullable=False, server_default="file"))
        batch.add_column(sa.Column("target", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("created_by", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("schedule") as batch:
        batch.drop_column("created_by")
        batch.drop_column("target")
        batch.drop_column("origin")
