"""The schema of the first release with migrations; also adopts databases made before it.

A database created by an older release (tables, no alembic_version) gets the tables, columns and
indexes it lacks, then the same full-text index a fresh one has. This replaces the ad hoc "add
missing columns" step the store used to run at every start.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()

sa.Table(
    "agent",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("fingerprint", sa.String(), nullable=False),
    sa.Column("public_key", sa.Text(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("groups", sa.String(), nullable=False),
    sa.Column("slots", sa.Integer(), nullable=False),
    sa.Column("version", sa.String(), nullable=False),
    sa.Column("facts", sa.String(), nullable=False),
    sa.Column("address", sa.String(), nullable=False),
    sa.Column("server", sa.String(), nullable=False),
    sa.Column("connected", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
    sa.Column("state_since", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_agent_fingerprint", "fingerprint"),
    sa.Index("ix_agent_name", "name", unique=True),
)

sa.Table(
    "audit_event",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("actor", sa.String(), nullable=False),
    sa.Column("action", sa.String(), nullable=False),
    sa.Column("source", sa.String(), nullable=False),
    sa.Column("detail", sa.Text(), nullable=False),
    sa.Column("prev_hash", sa.String(), nullable=False),
    sa.Column("hash", sa.String(), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_audit_event_action", "action"),
    sa.Index("ix_audit_event_at", "at"),
    sa.Index("ix_audit_event_hash", "hash"),
)

sa.Table(
    "enrolltoken",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("token_hash", sa.String(), nullable=False),
    sa.Column("uses_left", sa.Integer(), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("created_by", sa.String(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_enrolltoken_token_hash", "token_hash", unique=True),
)

sa.Table(
    "job",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("pattern", sa.String(), nullable=False),
    sa.Column("command", sa.Text(), nullable=False),
    sa.Column("vars", sa.String(), nullable=False),
    sa.Column("submitted_by", sa.String(), nullable=False),
    sa.Column("source", sa.String(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("timeout", sa.Float(), nullable=True),
    sa.Column("pending_timeout", sa.Float(), nullable=False),
    sa.Column("forks", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_job_created_at", "created_at"),
    sa.Index("ix_job_state", "state"),
)

sa.Table(
    "schedule",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("path", sa.String(), nullable=False),
    sa.Column("cron", sa.String(), nullable=False),
    sa.Column("tz", sa.String(), nullable=False),
    sa.Column("catch_up", sa.String(), nullable=False),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("next_fire", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_fire", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_job", sa.Integer(), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_schedule_name", "name", unique=True),
)

sa.Table(
    "user",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("password_hash", sa.String(), nullable=False),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("scope", sa.String(), nullable=False),
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_user_name", "name", unique=True),
)

sa.Table(
    "apitoken",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("token_hash", sa.String(), nullable=False),
    sa.Column("user_id", sa.Integer(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked", sa.Boolean(), nullable=False),
    sa.Column("last_used", sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(
        ["user_id"],
        ["user.id"],
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_apitoken_token_hash", "token_hash", unique=True),
)

sa.Table(
    "job_webhook",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("job_id", sa.Integer(), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("events", sa.String(), nullable=False),
    sa.ForeignKeyConstraint(
        ["job_id"],
        ["job.id"],
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_job_webhook_job_id", "job_id"),
)

sa.Table(
    "run",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("job_id", sa.Integer(), nullable=False),
    sa.Column("task", sa.String(), nullable=False),
    sa.Column("host", sa.String(), nullable=False),
    sa.Column("connection", sa.String(), nullable=False),
    sa.Column("agent", sa.String(), nullable=False),
    sa.Column("command", sa.Text(), nullable=False),
    sa.Column("state", sa.String(), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("exit_code", sa.Integer(), nullable=True),
    sa.Column("signal", sa.String(), nullable=True),
    sa.Column("reason", sa.String(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("out_bytes", sa.Integer(), nullable=False),
    sa.Column("out_lines", sa.Integer(), nullable=False),
    sa.Column("truncated", sa.Boolean(), nullable=False),
    sa.Column("dropped_bytes", sa.Integer(), nullable=False),
    sa.Column("dropped_lines", sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(
        ["job_id"],
        ["job.id"],
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_run_host", "host"),
    sa.Index("ix_run_job_id", "job_id"),
    sa.Index("ix_run_created", "created_at"),
    sa.Index("ix_run_state_host", "state", "host"),
)

sa.Table(
    "schedule_fire",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("schedule_id", sa.Integer(), nullable=False),
    sa.Column("fire_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("job_id", sa.Integer(), nullable=True),
    sa.Column("server", sa.String(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(
        ["schedule_id"],
        ["schedule.id"],
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("schedule_id", "fire_time", name="uq_schedule_fire"),
)

sa.Table(
    "webhook_delivery",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("job_id", sa.Integer(), nullable=False),
    sa.Column("delivery", sa.String(), nullable=False),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("event", sa.String(), nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("ok", sa.Boolean(), nullable=False),
    sa.Column("status_code", sa.Integer(), nullable=True),
    sa.Column("error", sa.String(), nullable=False),
    sa.Column("duration_ms", sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(
        ["job_id"],
        ["job.id"],
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_webhook_delivery_job_id", "job_id"),
)

sa.Table(
    "log_line",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
    sa.Column("run_id", sa.Integer(), nullable=False),
    sa.Column("seq", sa.Integer(), nullable=False),
    sa.Column("ts", sa.Float(), nullable=False),
    sa.Column("stream", sa.String(), nullable=False),
    sa.Column("level", sa.String(), nullable=False),
    sa.Column("text", sa.Text(), nullable=False),
    sa.ForeignKeyConstraint(
        ["run_id"],
        ["run.id"],
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.UniqueConstraint("run_id", "seq", name="uq_log_line_run_seq"),
    sa.Index("ix_log_line_run_level_seq", "run_id", "level", "seq"),
)

sa.Table(
    "runevent",
    metadata,
    sa.Column("id", sa.Integer(), nullable=False),
    sa.Column("run_id", sa.Integer(), nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("detail", sa.String(), nullable=False),
    sa.ForeignKeyConstraint(
        ["run_id"],
        ["run.id"],
    ),
    sa.PrimaryKeyConstraint("id"),
    sa.Index("ix_runevent_run_id", "run_id"),
)


def upgrade() -> None:
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    metadata.create_all(bind, checkfirst=True)
    for table in metadata.sorted_tables:
        if table.name in existing:
            _adopt(bind, inspector, table)
    if bind.dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS log_fts USING fts5("
            "text, content='log_line', content_rowid='id')"
        )
        if "log_fts" not in existing and "log_line" in existing:
            op.execute("INSERT INTO log_fts(log_fts) VALUES ('rebuild')")
    elif bind.dialect.name == "postgresql":
        # substring search (ILIKE) of log lines, see docs/decisions/0007-postgresql-and-migrations.md
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute(
            "CREATE INDEX IF NOT EXISTS ix_log_line_text_trgm ON log_line "
            "USING gin (text gin_trgm_ops)"
        )


def _adopt(bind: sa.engine.Connection, inspector: sa.engine.Inspector, table: sa.Table) -> None:
    """Add the columns and indexes an older release's table lacks (new columns get defaults)."""
    have = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
    for column in table.columns:
        if column.name in have:
            if (
                bind.dialect.name == "postgresql"
                and isinstance(column.type, sa.DateTime)
                and not getattr(have[column.name], "timezone", True)
            ):
                # times were written as naive UTC; say so in the column type
                op.execute(
                    f'ALTER TABLE "{table.name}" ALTER COLUMN "{column.name}" '
                    f"TYPE timestamptz USING \"{column.name}\" AT TIME ZONE 'UTC'"
                )
            continue
        default = None if column.nullable else _empty_value(column.type)
        added = sa.Column(
            column.name, column.type, nullable=column.nullable, server_default=default
        )
        op.add_column(table.name, added)
    indexes = {ix["name"] for ix in inspector.get_indexes(table.name)}
    for index in table.indexes:
        if index.name not in indexes:
            index.create(bind)


def _empty_value(kind: sa.types.TypeEngine[object]) -> sa.TextClause:
    """What a required column added to an existing table holds in the old rows."""
    if isinstance(kind, sa.Boolean):
        return sa.text("false")
    if isinstance(kind, sa.Integer | sa.Float):
        return sa.text("0")
    if isinstance(kind, sa.DateTime):
        return sa.text("CURRENT_TIMESTAMP")
    return sa.text("''")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS log_fts")
    metadata.drop_all(op.get_bind())
