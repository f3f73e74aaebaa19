"""PostgreSQL's log storage: weekly partitions, binary COPY and the 64-line chunk index; a
part of `Store` (mixed into `LineQueries`).

Lines go to the partition of the week their run was created in (`day` = days since 1970-01-01
UTC of the run's `created_at`); each batch's lines of one run and one block of 64 seqs are also
written as one `log_chunk` row, whose text the trigram index covers. Search asks the chunk index,
then reads and matches only the lines of the chunks it names. Retention drops a week's
partitions once every run of that week is past retention (`drop_old_weeks`).

A line costs one b-tree entry, the unique `(run_id, seq, day)` (revision 0015): the level
index leaves out INFO lines (`of_levels`, `count_of_levels`), a job's stream reads lines in id
order through the chunks' id ranges (`job_lines`), and ids are numbered by the writer from one
value of the id sequence per batch (`line_ids`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any

from sqlalchemy import text
from sqlmodel import Session

from easytask.store.base import Queries

# One row of the log writer's batch: run_id, seq, ts, stream, level, text.
LogRow = tuple[int, int, float, str, str, str]


class Fenced(Exception):
    """This server's heartbeat row is gone: another server took its work over (and re-read
    its runs' output from the agents), so it stores no more lines."""


# -- weekly partitions and the chunk index -----------------------------------------

CHUNK_LINES = 64  # lines of one run indexed together in a log_chunk row (PostgreSQL)
RUN_DAY = "floor(extract(epoch FROM created_at) / 86400)::int"  # a run's partition key
_PARTITION_LOCK = 0x6561_7370  # held while a server creates partitions
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LINE_TYPES = ["int8", "int4", "int4", "float8", "text", "text", "text", "int4"]
_CHUNK_TYPES = ["int4", "int4", "int4", "int4", "text", "int8", "int8"]
# One line as COPY gets it: id, run_id, seq, ts, stream, level, text, day.
PgRow = tuple[int, int, int, float, str, str, str, int]
# One chunk row: run_id, first_seq, last_seq, day, text, first_id, last_id.
ChunkRow = tuple[int, int, int, int, str, int, int]
# Line ids come in blocks: the id sequence steps by ID_BLOCK (revision 0015), the writer takes
# one value per batch (per ID_BLOCK lines) and numbers the batch's lines from it, so a line
# costs no call of the sequence. A chunk's lines are in one block: last_id - first_id < ID_BLOCK.
ID_BLOCK = 1 << 20
# The level most lines have (stdout's). PostgreSQL's level index leaves its lines out (it is
# partial, revision 0015): a filter on the other levels reads that index, one that includes it
# reads the lines in seq order, and counts of it are the rest subtracted from the run's seqs.
COMMON_LEVEL = "INFO"


def of_levels(is_sqlite: bool, levels: Collection[str]) -> Any:
    """`log_line.level IN levels`; on PostgreSQL without the common level, also a literal
    `level <> 'INFO'`, so that the planner may use the partial level index whatever the
    parameters (a bound parameter would not prove the index's predicate)."""
    from sqlalchemy import and_
    from sqlmodel import col

    from easytask.store.models import LogLine

    cond = col(LogLine.level).in_(list(levels))
    if is_sqlite or COMMON_LEVEL in levels:
        return cond
    return and_(cond, text(f"log_line.level <> '{COMMON_LEVEL}'"))


def count_of_levels(
    s: Session, is_sqlite: bool, where: Sequence[Any], levels: Collection[str], lines: int
) -> int:
    """How many of the `lines` lines matching `where` (a run's first `lines` seqs: seqs have
    no gaps) have one of `levels`. On PostgreSQL, with the common level among them, the lines
    of the other levels (in the partial index) are counted and subtracted."""
    from sqlalchemy import func
    from sqlmodel import col, select

    from easytask.store.models import LogLine

    if is_sqlite or COMMON_LEVEL not in levels:
        q = select(func.count()).select_from(LogLine).where(*where, of_levels(is_sqlite, levels))
        return int(s.exec(q).one() or 0)
    q = (
        select(func.count())
        .select_from(LogLine)
        .where(
            *where,
            col(LogLine.level).not_in(list(levels)),
            text(f"log_line.level <> '{COMMON_LEVEL}'"),
        )
    )
    return lines - int(s.exec(q).one() or 0)


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


def chunks_of(lines: Sequence[PgRow]) -> list[ChunkRow]:
    """(run_id, first_seq, last_seq, day, text, first_id, last_id) rows indexing `lines`: each
    run's lines of one block of 64 seqs and one block of ids together, their texts joined by
    newlines.

    A search that matches a chunk's text reads the lines between its first and last seq and
    keeps those that match themselves; a line that holds the needle is in a chunk that holds
    it, so nothing is missed, and what a batch split in two chunks is found through either.
    A job's stream reads lines by id through the chunks' id ranges (`job_lines`).
    """
    if not lines:
        return []
    runs = list(map(itemgetter(1), lines))
    if runs.count(runs[0]) == len(runs):
        return _run_chunks(lines)
    return _chunks_line_by_line(lines)


def _run_chunks(lines: Sequence[PgRow]) -> list[ChunkRow]:
    """`chunks_of` the lines of one run, in the order they came. Most often their seqs follow
    one another and their ids are in one block: the chunks are then slices, cut where a block
    of 64 seqs ends, with no work per line."""
    first, last, count = lines[0], lines[-1], len(lines)
    ids = list(map(itemgetter(0), lines))
    seq0 = first[2]
    if not (
        last[2] - seq0 == count - 1
        and first[0] // ID_BLOCK == last[0] // ID_BLOCK
        and list(map(itemgetter(2), lines)) == list(range(seq0, seq0 + count))
        and ids == sorted(ids)
    ):
        return _chunks_line_by_line(lines)
    texts = list(map(itemgetter(6), lines))
    run_id, day = first[1], first[7]
    out: list[ChunkRow] = []
    a = 0
    while a < count:
        b = min(count, a + CHUNK_LINES - (seq0 + a - 1) % CHUNK_LINES)
        out.append((run_id, seq0 + a, seq0 + b - 1, day, "\n".join(texts[a:b]), ids[a], ids[b - 1]))
        a = b
    return out


def _chunks_line_by_line(lines: Sequence[PgRow]) -> list[ChunkRow]:
    """`chunks_of`, grouping each line by its run, block of seqs and block of ids."""
    groups: dict[tuple[int, int, int], list[Any]] = {}
    for line_id, run_id, seq, _ts, _stream, _level, text_, day in lines:
        key = (run_id, (seq - 1) // CHUNK_LINES, line_id // ID_BLOCK)
        group = groups.get(key)
        if group is None:
            groups[key] = [run_id, seq, seq, day, [text_], line_id, line_id]
        else:
            if seq < group[1]:
                group[1] = seq
            if seq > group[2]:
                group[2] = seq
            group[4].append(text_)
            if line_id < group[5]:
                group[5] = line_id
            if line_id > group[6]:
                group[6] = line_id
    return [(g[0], g[1], g[2], g[3], "\n".join(g[4]), g[5], g[6]) for g in groups.values()]


def pg_rows(ids: Sequence[int], rows: Sequence[LogRow], days: dict[int, int]) -> list[PgRow]:
    """The writer's rows as COPY takes them: with their ids and partition keys, NUL replaced."""
    if "\x00" in "".join(map(itemgetter(5), rows)):
        rows = [(r, s, t, st, lv, clean(x)) for r, s, t, st, lv, x in rows]
    if len(days) == 1:
        (day,) = days.values()
        return [
            (i, r, s, t, st, lv, x, day) for i, (r, s, t, st, lv, x) in zip(ids, rows, strict=True)
        ]
    return [
        (i, r, s, t, st, lv, x, days[r]) for i, (r, s, t, st, lv, x) in zip(ids, rows, strict=True)
    ]


def _copy_lines(cur: Any, table: str, lines: Sequence[PgRow]) -> None:
    with cur.copy(
        f"COPY {table} (id, run_id, seq, ts, stream, level, text, day) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_LINE_TYPES)
        for line in lines:
            copy.write_row(line)


def _copy_chunks(cur: Any, chunks: Sequence[ChunkRow]) -> None:
    with cur.copy(
        "COPY log_chunk (run_id, first_seq, last_seq, day, text, first_id, last_id) "
        "FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(_CHUNK_TYPES)
        for chunk in chunks:
            copy.write_row(chunk)


def _insert_new_lines(cur: Any, lines: Sequence[PgRow]) -> list[PgRow]:
    """Store those of `lines` not stored yet (a batch written again); the lines it stored."""
    cur.execute(
        "CREATE TEMP TABLE IF NOT EXISTS log_line_retry (id int8, run_id int4, seq int4, "
        "ts float8, stream text, level text, text text, day int4) ON COMMIT DELETE ROWS"
    )
    _copy_lines(cur, "log_line_retry", lines)
    cur.execute(
        "INSERT INTO log_line (id, run_id, seq, ts, stream, level, text, day) "
        "SELECT id, run_id, seq, ts, stream, level, text, day FROM log_line_retry ORDER BY id "
        "ON CONFLICT (run_id, seq, day) DO NOTHING RETURNING id"
    )
    stored = {int(r) for (r,) in cur.fetchall()}
    return [line for line in lines if line[0] in stored]


def line_ids(pg: Any, count: int) -> list[int]:
    """Ids for `count` new lines, in order: a block of the id sequence per `ID_BLOCK` lines."""
    blocks = pg.execute(
        "SELECT nextval('log_line_id_seq') FROM generate_series(1, %s)",
        ((count + ID_BLOCK - 1) // ID_BLOCK,),
    ).fetchall()
    bases = [int(b) for (b,) in blocks]
    if len(bases) == 1:
        return list(range(bases[0], bases[0] + count))
    return [bases[i // ID_BLOCK] + i % ID_BLOCK for i in range(count)]


_JOB_CHUNKS = (
    "SELECT c.run_id, c.day, c.first_seq, c.last_seq, c.first_id, c.last_id "
    "FROM log_chunk AS c JOIN run AS r ON r.id = c.run_id "
    "WHERE r.job_id = :job{hosts} AND c.first_id > :lo AND c.last_id > :after "
    "ORDER BY c.first_id LIMIT :k"
)
# The first id of a job's lines: each run's first chunk (its lines are numbered as they come,
# so the chunk of its first seqs holds its first ids), read in the run's own week.
_JOB_FLOOR = (
    "SELECT min(f.first_id) FROM run AS r CROSS JOIN LATERAL (SELECT c.first_id "
    "FROM log_chunk AS c WHERE c.run_id = r.id "
    f"AND c.day = {RUN_DAY.replace('created_at', 'r.created_at')} "
    "ORDER BY c.first_seq LIMIT 1) AS f WHERE r.job_id = :job{hosts}"
)
_CHUNK_LINES = (
    "SELECT l.id, l.run_id, l.seq, l.ts, l.stream, l.level, l.text "
    "FROM unnest(CAST(:runs AS int4[]), CAST(:days AS int4[]), CAST(:fs AS int4[]), "
    "CAST(:ls AS int4[]), CAST(:fi AS int8[]), CAST(:li AS int8[])) "
    "AS c(run_id, day, first_seq, last_seq, first_id, last_id) "
    "CROSS JOIN LATERAL (SELECT * FROM log_line AS l1 WHERE l1.run_id = c.run_id "
    "AND l1.day = c.day AND l1.seq BETWEEN c.first_seq AND c.last_seq "
    "AND l1.id BETWEEN c.first_id AND c.last_id AND l1.id > :after AND l1.id < :cut "
    "OFFSET 0) AS l ORDER BY l.id LIMIT :limit"
)


def job_lines(
    conn: Any, job_id: int, after_id: int, limit: int, hosts: Collection[str] | None = None
) -> list[Any]:
    """Lines of a job's runs after a line id, in id order (PostgreSQL): read through the
    chunks' id ranges, so that no index on the lines' ids is kept.

    The chunks holding lines after `after_id` are taken in order of their first id, `k` at a
    time (a chunk's ids span less than `ID_BLOCK`, so they start after `after_id - ID_BLOCK`,
    and none starts before the job's first line, `_JOB_FLOOR`).
    Every line with an id below the first id of the k-th chunk is in the chunks before it:
    those lines are read by (run_id, seq), kept by id, and the next round starts there.
    """
    params: dict[str, Any] = {"job": job_id}
    where_hosts = ""
    if hosts is not None:
        names = sorted(hosts)
        if not names:
            return []
        where_hosts = " AND r.host IN (" + ", ".join(f":h{i}" for i in range(len(names))) + ")"
        params.update({f"h{i}": name for i, name in enumerate(names)})
    floor = conn.execute(text(_JOB_FLOOR.format(hosts=where_hosts)), params).scalar()
    if floor is None:
        return []  # no chunk, no line
    chunk_query = text(_JOB_CHUNKS.format(hosts=where_hosts))
    out: list[Any] = []
    after = after_id
    k = max(16, limit // 32)
    while len(out) < limit:
        # chunks of other jobs before this job's first line are not read
        params.update(lo=max(after - ID_BLOCK, int(floor) - 1), after=after, k=k)
        chunks = conn.execute(chunk_query, params).all()
        if not chunks:
            break
        full = len(chunks) == k
        cut = int(chunks[-1].first_id) if full else None
        if cut is not None and cut <= after + 1:
            k *= 2  # the chunks read all began before `after`: read more of them
            continue
        use = chunks[:-1] if full else chunks
        found = conn.execute(
            text(_CHUNK_LINES),
            {
                "runs": [c.run_id for c in use],
                "days": [c.day for c in use],
                "fs": [c.first_seq for c in use],
                "ls": [c.last_seq for c in use],
                "fi": [c.first_id for c in use],
                "li": [c.last_id for c in use],
                "after": after,
                "cut": cut if cut is not None else 1 << 62,
                "limit": limit - len(out),
            },
        ).all()
        out.extend(found)
        if cut is None:
            break
        after = cut - 1
    return out


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
    fence_node: str | None
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
        if self.fence_node is not None:
            self._hold_fence(pg, self.fence_node)
        run_ids = set(map(itemgetter(0), rows))
        days = self.run_days(pg, run_ids)
        weeks = {week_of(day) for day in days.values()}
        if not weeks <= self._weeks:
            self._ensure_weeks(pg, weeks)
        kept = rows if len(days) == len(run_ids) else [row for row in rows if row[0] in days]
        lines = pg_rows(line_ids(pg, len(kept)), kept, days)
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

    @staticmethod
    def _hold_fence(pg: Any, node: str) -> None:
        """Lines are stored only while this server's heartbeat row exists, and it stays until
        they are (a take-over, which deletes it, skips a row held so and waits its turn): a
        server that wakes up after another took its runs over cannot store a line twice."""
        found = pg.execute(
            "SELECT 1 FROM server_node WHERE id = %s FOR KEY SHARE", (node,)
        ).fetchone()
        if found is None:
            raise Fenced(f"server {node} was presumed dead: its runs are another server's")

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
