"""PostgreSQL's log storage: weekly partitions, binary COPY and the 64-line chunk index; a
part of `Store` (mixed into `LineQueries`).

Lines go to the partition of the week their run was created in (`day` = days since 1970-01-01
UTC of the run's `created_at`); each batch's lines of one run and one block of 64 seqs are also
written as one `log_chunk` row, whose text the trigram index covers. Search asks the chunk index,
then reads and matches only the lines of the chunks it names. Retention drops a week's
partitions once every run of that week is past retention (`drop_old_weeks`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from easytask.store.base import Queries

# One row of the log writer's batch: run_id, seq, ts, stream, level, text.
LogRow = tuple[int, int, float, str, str, str]

# -- weekly partitions and the chunk index -----------------------------------------

CHUNK_LINES = 64  # lines of one run indexed together in a log_chunk row (PostgreSQL)
RUN_DAY = "floor(extract(epoch FROM created_at) / 86400)::int"  # a run's partition key
_PARTITION_LOCK = 0x6561_7370  # held while a server creates partitions
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LINE_TYPES = ["int4", "int4", "float8", "text", "text", "text", "int4"]
_CHUNK_TYPES = ["int4", "int4", "int4", "int4", "text"]
# One line as COPY gets it: run_id, seq, ts, stream, level, text, day.
PgRow = tuple[int, int, float, str, str, str, int]


def day_of(when: datetime) -> int:
    """Days since 1970-01-01 UTC: the partition key of the lines of a run created `when`."""
    return int((when.astimezone(UTC) - EPOCH).total_seconds() // 86400)


def week_of(day: int) -> int:
    """The first day (a Monday) of the week holding `day`: where its partition starts."""
    return day - (day + 3) % 7


def partition_names(week: int) -> tuple[str, str]:
    """The log_line and log_chunk partitions of the week starting on day `week`."""
    name = (EPOCH + timedelta(days=week)).strftime("%Y%m%d")
    return f"log_line_w{name}", f"log_chunk_w{name}"


def partition_ddl(week: int) -> list[str]:
    """The statements that create the week's partitions."""
    return [
        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} "
        f"FOR VALUES FROM ({week}) TO ({week + 7})"
        for name, table in zip(partition_names(week), ("log_line", "log_chunk"), strict=True)
    ]


def existing_weeks(pg: Any) -> set[int]:
    """The weeks that have a log_line partition (read from the catalog)."""
    rows = pg.execute(
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'log_line'::regclass"
    ).fetchall()
    weeks = set()
    for (name,) in rows:
        if name.startswith("log_line_w") and name[10:].isdigit():
            when = datetime.strptime(name[10:], "%Y%m%d").replace(tzinfo=UTC)
            weeks.add(day_of(when))
    return weeks


def clean(line: str) -> str:
    """PostgreSQL text cannot hold NUL, which a command may well print: it becomes U+FFFD."""
    return line.replace("\x00", "\ufffd") if "\x00" in line else line


def chunks_of(lines: Sequence[PgRow]) -> list[tuple[int, int, int, int, str]]:
    """(run_id, first_seq, last_seq, day, text) rows indexing `lines`: each run's lines of one
    block of 64 seqs together, their texts joined by newlines.

    A search that matches a chunk's text reads the lines between its first and last seq and
    keeps those that match themselves; a line that holds the needle is in a chunk that holds
    it, so nothing is missed, and what a batch split in two chunks is found through either.
    """
    groups: dict[tuple[int, int], list[Any]] = {}
    for run_id, seq, _ts, _stream, _level, text_, day in lines:
        key = (run_id, (seq - 1) // CHUNK_LINES)
        group = groups.get(key)
        if group is None:
            groups[key] = [run_id, seq, seq, day, [text_]]
        else:
            if seq < group[1]:
                group[1] = seq
            if seq > group[2]:
                group[2] = seq
            group[4].append(text_)
    return [(g[0], g[1], g[2], g[3], "\n".join(g[4])) for g in groups.values()]


def _copy_lines(cur: Any, table: str, lines: Sequence[PgRow]) -> None:
    with cur.copy(
        f"COPY {table} (run_id, seq, ts, stream, level, text, day) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_LINE_TYPES)
        for line in lines:
            copy.write_row(line)


def _copy_chunks(cur: Any, chunks: Sequence[tuple[int, int, int, int, str]]) -> None:
    with cur.copy(
        "COPY log_chunk (run_id, first_seq, last_seq, day, text) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_CHUNK_TYPES)
        for chunk in chunks:
            copy.write_row(chunk)


def _insert_new_lines(cur: Any, lines: Sequence[PgRow]) -> list[PgRow]:
    """Store those of `lines` not stored yet (a batch written again); the lines it stored."""
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS log_line_retry (run_id int4, seq int4, ts float8, "
        "stream text, level text, text text, day int4) ON COMMIT DELETE ROWS"
    )
    _copy_lines(cur, "log_line_retry", lines)
    cur.execute(
        "INSERT INTO log_line (run_id, seq, ts, stream, level, text, day) "
        "SELECT run_id, seq, ts, stream, level, text, day FROM log_line_retry ORDER BY run_id, seq "
        "ON CONFLICT (run_id, seq, day) DO NOTHING RETURNING run_id, seq"
    )
    stored = {(int(r), int(s)) for r, s in cur.fetchall()}
    return [line for line in lines if (line[0], line[1]) in stored]


def like_pattern(needle: str) -> tuple[str, str | None]:
    """A `LIKE` pattern for lines containing `needle` literally, and its escape character.

    `%`, `_` and the escape character are escaped; the pattern carries an escape character only
    when it needs one (an ESCAPE clause costs a little per row on SQLite).
    """
    needle = needle.replace("\x00", "")  # PostgreSQL text cannot hold NUL; no stored line has it
    if not any(ch in needle for ch in "\\%_"):
        return "%" + needle + "%", None
    escaped = needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return "%" + escaped + "%", "\\"


class PgLineQueries(Queries):
    """PostgreSQL's side of the Store's queries on log lines."""

    is_sqlite: bool
    _run_day: dict[int, int]  # run id -> its lines' partition key
    _weeks: set[int]  # weeks whose partitions exist

    def _write_lines_postgres(self, conn: Any, rows: Sequence[LogRow]) -> None:
        """COPY the lines into their week's partition, then their chunks into the search index.

        Each line goes to the partition of its run's week (`day`, see `run_days`). A batch
        written again (a commit whose answer was lost, then retried) hits the unique key
        `(run_id, seq, day)`: the batch then goes through `ON CONFLICT DO NOTHING` and only the
        lines not stored yet are stored and indexed, so every line is stored exactly once.
        """
        import psycopg

        pg = conn.driver_connection
        days = self.run_days(pg, {row[0] for row in rows})
        weeks = {week_of(day) for day in days.values()}
        if not weeks <= self._weeks:
            self._ensure_weeks(pg, weeks)
        lines = [
            (run_id, seq, ts, stream, level, clean(line), days[run_id])
            for run_id, seq, ts, stream, level, line in rows
            if run_id in days
        ]
        cur = pg.cursor()
        try:
            try:
                _copy_lines(cur, "log_line", lines)
            except psycopg.errors.UniqueViolation:
                pg.rollback()
                lines = _insert_new_lines(cur, lines)
            _copy_chunks(cur, chunks_of(lines))
        finally:
            cur.close()

    def run_days(self, pg: Any, run_ids: set[int]) -> dict[int, int]:
        """The partition key (`day`) of each run that exists, from a cache or the run table."""
        cache: dict[int, int] = self._run_day
        missing = [r for r in run_ids if r not in cache]
        if missing:
            if len(cache) > 100_000:
                cache.clear()
            found = pg.execute(
                f"SELECT id, {RUN_DAY} FROM run WHERE id = ANY(%s)", (missing,)
            ).fetchall()
            pg.commit()
            cache.update((int(i), int(d)) for i, d in found)
        return {r: cache[r] for r in run_ids if r in cache}

    def _ensure_weeks(self, pg: Any, weeks: set[int]) -> None:
        """Create the weekly partitions of `weeks` (and of the week after each) if need be."""
        if not self._weeks:
            self._weeks.update(existing_weeks(pg))
            pg.commit()
        wanted = sorted({w for week in weeks for w in (week, week + 7)} - self._weeks)
        if not wanted:
            return
        # Servers sharing the database create partitions one at a time.
        pg.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
        have = existing_weeks(pg)
        for week in wanted:
            if week not in have:
                for statement in partition_ddl(week):
                    pg.execute(statement)
        pg.commit()
        self._weeks.update(wanted)

    def _of_run(self, s: Session, run_id: int) -> Any:
        """`log_line.run_id = run_id`, and on PostgreSQL the run's `day` too, so that the query
        reads the run's partition alone (planning for every week costs more than the query).
        The day is the one its stored lines carry, read once per run."""
        from sqlalchemy import and_, literal_column
        from sqlmodel import col

        from easytask.store.models import LogLine

        cond = col(LogLine.run_id) == run_id
        if self.is_sqlite:
            return cond
        day = self.line_day(s, run_id)
        if day is None:
            return cond
        return and_(cond, literal_column("log_line.day") == day)

    def line_day(self, s: Session, run_id: int) -> int | None:
        """The partition key of a run's stored lines (None while it has none)."""
        day = self._run_day.get(run_id)
        if day is None:
            day = (
                s.connection()
                .execute(text("SELECT day FROM log_line WHERE run_id = :r LIMIT 1"), {"r": run_id})
                .scalar()
            )
            if day is None:
                return None
            self._run_day[run_id] = day = int(day)
        return day

    def _search_by_chunks(
        self,
        s: Session,
        run_id: int,
        needle: str,
        limit: int,
        levels: Sequence[str] | None = None,
    ) -> list[int]:
        """Seqs of a run's lines containing `needle` (PostgreSQL): the chunks' trigram index
        names the chunks that hold it, then only their lines are read and matched."""
        day = self.line_day(s, run_id)
        rows = chunk_matches(s, "l.seq", run_id, needle, limit, levels, day=day)
        return [int(r[0]) for r in rows]


def chunk_matches(
    s: Session,
    columns: str,
    run_id: int,
    needle: str,
    limit: int | None,
    levels: Sequence[str] | None = None,
    after_seq: int = 0,
    day: int | None = None,
) -> list[Any]:
    """`columns` of a run's lines (`l`) after `after_seq` that contain `needle`, in seq order,
    found through the chunk index: only the lines of chunks holding the needle are read."""
    pattern, escape = like_pattern(needle)
    params: dict[str, Any] = {"run": run_id, "pattern": pattern, "after": after_seq}
    like = "ILIKE :pattern" + (" ESCAPE :escape" if escape else "")
    if escape:
        params["escape"] = escape
    where = ""
    if levels:
        names = [f"lv{i}" for i in range(len(levels))]
        where = " AND l.level IN (" + ", ".join(":" + n for n in names) + ")"
        params.update(zip(names, levels, strict=True))
    if limit:
        params["limit"] = limit
    in_week = ""
    if day is not None:  # the run's partition only (see `_of_run`)
        in_week = " AND day = :day"
        params["day"] = day
    # The chunks first (a few, from the trigram index), then each chunk's lines by the index on
    # (run_id, seq, day): a LATERAL subquery kept apart by OFFSET 0, so that the planner reads
    # only those lines, never the whole run.
    rows = s.connection().execute(
        text(
            "WITH c AS MATERIALIZED (SELECT first_seq, last_seq, day FROM log_chunk "
            f"WHERE run_id = :run AND last_seq > :after AND text {like}{in_week}) "
            f"SELECT DISTINCT {columns} FROM c CROSS JOIN LATERAL ("
            "SELECT * FROM log_line AS l1 WHERE l1.run_id = :run AND l1.day = c.day "
            + ("" if day is None else "AND l1.day = :day ")
            + "AND l1.seq BETWEEN c.first_seq AND c.last_seq AND l1.seq > :after "
            f"AND l1.text {like} OFFSET 0) AS l WHERE true"
            + where
            + " ORDER BY l.seq"
            + (" LIMIT :limit" if limit else "")
        ),
        params,
    )
    return list(rows)
