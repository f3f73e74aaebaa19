"""Each job records the server that runs it, so a server starting on a shared database resumes
only its own unfinished jobs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # jobs made before this revision keep "" and any server may resume them, as before
    op.add_column("job", sa.Column("server", sa.String(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("server")
