"""PostgreSQL keeps log lines in weekly partitions and indexes them for search in chunks of up to
64 lines (`log_chunk`, trigram index on the chunk's text) instead of line by line. SQLite is
unchanged.

Lines go to the partition of the week their run was created in (`day`: days since 1970-01-01
UTC of the run's `created_at`), so a run's lines stay together and `(run_id, seq, day)` is as
unique as `(run_id, seq)` was. Retention drops a week's partitions once every run of that week
is past retention. Existing lines are moved and their chunks built here.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

RUN_DAY = "floor(extract(epoch FROM {col}) / 86400)::int"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _week(day: int) -> int:
    """The first day (a Monday) of the week holding `day`."""
    return day - (day + 3) % 7


def _partitions(week: int) -> list[str]:
    name = (EPOCH + timedelta(days=week)).strftime("%Y%m%d")
    return [
        f"CREATE TABLE IF NOT EXISTS {table}_w{name} PARTITION OF {table} "
        f"FOR VALUES FROM ({week}) TO ({week + 7})"
        for table in ("log_line", "log_chunk")
    ]


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # SQLite keeps one table and its FTS5 index
    op.execute("DROP INDEX IF EXISTS ix_log_line_text_trgm")
    op.execute("DROP INDEX IF EXISTS ix_log_line_run_level_seq")
    op.execute("ALTER TABLE log_line DROP CONSTRAINT IF EXISTS uq_log_line_run_seq")
    op.execute("ALTER TABLE log_line RENAME TO log_line_0009")
    op.execute("ALTER TABLE log_line_0009 RENAME CONSTRAINT log_line_pkey TO log_line_0009_pkey")
    op.execute("ALTER TABLE log_line_0009 ALTER COLUMN id DROP DEFAULT")
    op.execute("ALTER SEQUENCE log_line_id_seq OWNED BY NONE")
    op.execute(
        "CREATE TABLE log_line ("
        "id bigint NOT NULL DEFAULT nextval('log_line_id_seq'), "
        "run_id integer NOT NULL, seq integer NOT NULL, ts double precision NOT NULL, "
        "stream varchar NOT NULL, level varchar NOT NULL, text text NOT NULL, "
        "day integer NOT NULL) PARTITION BY RANGE (day)"
    )
    op.execute("ALTER SEQUENCE log_line_id_seq OWNED BY log_line.id")
    op.execute("CREATE UNIQUE INDEX uq_log_line_run_seq ON log_line (run_id, seq, day)")
    op.execute("CREATE INDEX ix_log_line_run_level_seq ON log_line (run_id, level, seq)")
    # a job's lines in arrival order (its event stream's catch-up), as the primary key did
    op.execute("CREATE INDEX ix_log_line_id ON log_line (id)")
    op.execute(
        "CREATE TABLE log_chunk (run_id integer NOT NULL, first_seq integer NOT NULL, "
        "last_seq integer NOT NULL, day integer NOT NULL, text text NOT NULL) "
        "PARTITION BY RANGE (day)"
    )
    op.execute("CREATE INDEX ix_log_chunk_run_seq ON log_chunk (run_id, first_seq)")
    op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    op.execute("CREATE INDEX ix_log_chunk_text_trgm ON log_chunk USING gin (text gin_trgm_ops)")
    today = int((datetime.now(UTC) - EPOCH).total_seconds() // 86400)
    weeks = {_week(today), _week(today) + 7}
    days = bind.exec_driver_sql(
        f"SELECT DISTINCT {RUN_DAY.format(col='created_at')} FROM run"
    ).scalars()
    weeks.update(_week(int(day)) for day in days)
    for week in sorted(weeks):
        for statement in _partitions(week):
            op.execute(statement)
    op.execute(
        "INSERT INTO log_line (id, run_id, seq, ts, stream, level, text, day) "
        "SELECT l.id, l.run_id, l.seq, l.ts, l.stream, l.level, l.text, "
        f"{RUN_DAY.format(col='r.created_at')} "
        "FROM log_line_0009 AS l JOIN run AS r ON r.id = l.run_id"
    )
    op.execute(
        "INSERT INTO log_chunk (run_id, first_seq, last_seq, day, text) "
        "SELECT run_id, min(seq), max(seq), day, string_agg(text, E'\\n' ORDER BY seq) "
        "FROM log_line GROUP BY run_id, day, (seq - 1) / 64"
    )
    op.execute("DROP TABLE log_line_0009")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("ALTER TABLE log_line RENAME TO log_line_0011")
    op.execute("ALTER TABLE log_line_0011 ALTER COLUMN id DROP DEFAULT")
    op.execute("ALTER SEQUENCE log_line_id_seq OWNED BY NONE")
    op.execute("DROP INDEX uq_log_line_run_seq")
    op.execute("DROP INDEX ix_log_line_run_level_seq")
    op.execute("DROP INDEX ix_log_line_id")
    op.execute(
        "CREATE TABLE log_line ("
        "id bigint NOT NULL DEFAULT nextval('log_line_id_seq') PRIMARY KEY, "
        "run_id integer NOT NULL REFERENCES run (id), seq integer NOT NULL, "
        "ts double precision NOT NULL, stream varchar NOT NULL, level varchar NOT NULL, "
        "text text NOT NULL, CONSTRAINT uq_log_line_run_seq UNIQUE (run_id, seq))"
    )
    op.execute("ALTER SEQUENCE log_line_id_seq OWNED BY log_line.id")
    op.execute(
        "INSERT INTO log_line (id, run_id, seq, ts, stream, level, text) "
        "SELECT id, run_id, seq, ts, stream, level, text FROM log_line_0011"
    )
    op.execute("DROP TABLE log_line_0011")
    op.execute("DROP TABLE log_chunk")
    op.execute("CREATE INDEX ix_log_line_run_level_seq ON log_line (run_id, level, seq)")
    op.execute("CREATE INDEX ix_log_line_text_trgm ON log_line USING gin (text gin_trgm_ops)")
