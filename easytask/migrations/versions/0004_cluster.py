"""Several servers share the work: which server executes each run, which servers are alive, and
which jobs carry secrets that only their server holds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # runs made before this revision keep "": the server that owns their job executes them
    op.add_column("run", sa.Column("server", sa.String(), nullable=False, server_default=""))
    op.create_index("ix_run_server", "run", ["server"])
    op.add_column(
        "job", sa.Column("masked", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_table(
        "server_node",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("process", sa.String(), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("agents", sa.String(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("server_node")
    with op.batch_alter_table("job") as batch:
        batch.drop_column("masked")
    op.drop_index("ix_run_server", table_name="run")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("server")
