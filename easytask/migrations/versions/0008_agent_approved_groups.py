"""Group labels an agent reports place it in groups only once an admin approves them.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nothing is approved on upgrade: a label claimed before it may be the claim this closes
    op.add_column(
        "agent", sa.Column("approved_groups", sa.String(), nullable=False, server_default="")
    )


def downgrade() -> None:
    with op.batch_alter_table("agent") as batch:
        batch.drop_column("approved_groups")
