"""Host metrics: agents' raw samples and their one-minute rollups.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FIELDS = (
    "cpu",
    "iowait",
    "load1",
    "load5",
    "load15",
    "mem_used",
    "mem_available",
    "swap_used",
    "disk_root_pct",
    "disk_work_pct",
    "net_rx",
    "net_tx",
    "procs",
)


def upgrade() -> None:
    op.create_table(
        "hostmetric",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("t", sa.Float(), nullable=False),
        *[sa.Column(name, sa.Float(), nullable=True) for name in FIELDS],
        sa.PrimaryKeyConstraint("agent", "t"),
    )
    op.create_index("ix_hostmetric_t", "hostmetric", ["t"])
    op.create_table(
        "hostmetric_rollup",
        sa.Column("agent", sa.String(), nullable=False),
        sa.Column("t", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        *[
            sa.Column(f"{name}_{kind}", sa.Float(), nullable=True)
            for name in FIELDS
            for kind in ("min", "avg", "max")
        ],
        sa.PrimaryKeyConstraint("agent", "t"),
    )
    op.create_index("ix_hostmetric_rollup_t", "hostmetric_rollup", ["t"])


def downgrade() -> None:
    op.drop_index("ix_hostmetric_rollup_t", table_name="hostmetric_rollup")
    op.drop_table("hostmetric_rollup")
    op.drop_index("ix_hostmetric_t", table_name="hostmetric")
    op.drop_table("hostmetric")
