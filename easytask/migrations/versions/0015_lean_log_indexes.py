"""PostgreSQL stores a log line with one b-tree entry instead of three: the unique
`(run_id, seq, day)`. SQLite is unchanged.

- The level index leaves out the lines of the common level (INFO, what stdout gets): a filter
  on the other levels reads it as before; one that includes INFO reads a run's lines in seq
  order (most lines are INFO), and counts of INFO lines are the run's seqs less the other
  levels' (seqs have no gaps).
- The index on `id` goes: a job's event stream reads its lines in id order through the chunks,
  which now carry the first and last id of their lines (`log_chunk.first_id`, `last_id`,
  indexed by `first_id`: one entry per chunk of up to 64 lines).
- Ids come in blocks: the id sequence steps by 2^20 and the log writer numbers a batch's lines
  from one value of it, so that a line costs no call of the sequence. A chunk's lines are in
  one block of 2^20 ids; the chunks already stored are built again that way (with their ids).

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

ID_BLOCK = 1 << 20  # easytask.store.pglog.ID_BLOCK


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS ix_log_line_run_level_seq")
    op.execute(
        "CREATE INDEX ix_log_line_run_level_seq ON log_line (run_id, level, seq) "
        "WHERE level <> 'INFO'"
    )
    op.execute("ALTER TABLE log_chunk ADD COLUMN first_id bigint, ADD COLUMN last_id bigint")
    op.execute("TRUNCATE log_chunk")
    op.execute(
        "INSERT INTO log_chunk (run_id, first_seq, last_seq, day, text, first_id, last_id) "
        "SELECT run_id, min(seq), max(seq), day, string_agg(text, E'\\n' ORDER BY seq), "
        "min(id), max(id) FROM log_line "
        f"GROUP BY run_id, day, (seq - 1) / 64, id / {ID_BLOCK}"
    )
    op.execute("ALTER TABLE log_chunk ALTER COLUMN first_id SET NOT NULL")
    op.execute("ALTER TABLE log_chunk ALTER COLUMN last_id SET NOT NULL")
    op.execute("CREATE INDEX ix_log_chunk_first_id ON log_chunk (first_id)")
    op.execute("DROP INDEX IF EXISTS ix_log_line_id")
    op.execute(f"ALTER SEQUENCE log_line_id_seq INCREMENT BY {ID_BLOCK}")
    # the next block starts after every id stored
    op.execute(
        "SELECT setval('log_line_id_seq', greatest((SELECT last_value FROM log_line_id_seq), "
        "(SELECT coalesce(max(id), 1) FROM log_line)))"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("ALTER SEQUENCE log_line_id_seq INCREMENT BY 1")
    op.execute("CREATE INDEX ix_log_line_id ON log_line (id)")
    op.execute("DROP INDEX IF EXISTS ix_log_chunk_first_id")
    # chunks of one block of ids are chunks as revision 0011 reads them (lines between two seqs)
    op.execute("ALTER TABLE log_chunk DROP COLUMN first_id, DROP COLUMN last_id")
    op.execute("DROP INDEX IF EXISTS ix_log_line_run_level_seq")
    op.execute("CREATE INDEX ix_log_line_run_level_seq ON log_line (run_id, level, seq)")
