"""Log lines: the log writer's batch insert, reads, windows and search; a part of `Store`."""

from __future__ import annotations

import functools
import re
import sqlite3
from bisect import bisect_left
from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from itertools import chain
from typing import Any

from sqlalchemy import case, func, text
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from easytask.loglines import LEVELS
from easytask.store import statements as sql
from easytask.store.models import LogLine
from easytask.store.pglog import (
    LogRow,
    PgLineQueries,
    chunk_matches,
    count_of_levels,
    day_of,
    job_lines,
    like_pattern,
    of_levels,
)

__all__ = ["LogRow", "LineQueries", "like_pattern"]

_LINE_COLUMNS = "(run_id, seq, ts, stream, level, text)"
_LINE_CHUNK = 512  # rows per multi-row INSERT of log lines (SQLite)
_FIELD_NAMES = ("id", "run_id", "seq", "ts", "stream", "level", "text")
_LINE_FIELDS = ", ".join(f"l.{name}" for name in _FIELD_NAMES)
INDEX_CANDIDATES = 20000  # lines the full-text index may name before a search reads them all
POSITION_MARKS = 20_000  # seqs read from one side before trying the other (numbering matches)
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+")


@functools.cache
def _insert_lines_sql(rows: int) -> str:
    """One INSERT of `rows` log lines."""
    values = ",".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    # OR IGNORE: a batch written again (its commit's answer lost) stores only what is new
    return f"INSERT OR IGNORE INTO log_line {_LINE_COLUMNS} VALUES {values}"


def _insert_chunk(dbapi_conn: Any) -> int:
    """Rows per multi-row INSERT: 512, or fewer where SQLite allows fewer parameters."""
    params = dbapi_conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return max(1, min(_LINE_CHUNK, params // 6))


def index_words(needle: str) -> tuple[list[str], str | None]:
    """Words of `needle` that every line containing it holds as whole words in the full-text
    index (longest first), and its last word when only that word's start is certain.

    Only ASCII letters and digits between ASCII separators count: the index (FTS5 `unicode61`)
    splits text at every such separator, so a word with a separator on both sides inside the
    needle is a whole word of any line that contains the needle; the last word, with a
    separator before it and the needle's end after it, starts one. A word at the needle's start
    may be the end of a longer word, and a word next to other characters is not used.
    """
    words: list[str] = []
    prefix = None
    for match in _ASCII_WORD.finditer(needle):
        start, end = match.span()
        before = start > 0 and needle[start - 1].isascii()
        if not before:
            continue
        if end < len(needle) and needle[end].isascii():
            words.append(match.group().lower())
        elif end == len(needle):
            prefix = match.group().lower()
    words.sort(key=len, reverse=True)
    return words, prefix


_OUTPUT = sql.LOG_LINE.c.stream != "system"
# where a re-attached run continues: its stored output lines, its highest seq (system lines
# count too) and the characters of its stored output
RESUME_COLUMNS = (
    func.sum(case((_OUTPUT, 1), else_=0)),
    func.max(sql.LOG_LINE.c.seq),
    func.sum(case((_OUTPUT, func.length(sql.LOG_LINE.c.text)), else_=0)),
)


class LineQueries(PgLineQueries):
    """The Store's queries on log lines (mixed into `Store`; called on the database thread)."""

    is_sqlite: bool
    _raw: Any

    def _raw_conn(self) -> Any:
        if self._raw is None:
            self._raw = self.engine.raw_connection()
        return self._raw

    def write_lines(self, rows: Sequence[LogRow]) -> None:
        """Store a batch of log lines in one transaction and index them for search."""
        if not rows:
            return
        conn = self._raw_conn()
        try:
            if self.is_sqlite:
                self._write_lines_sqlite(conn, rows)
            else:
                try:
                    self._write_lines_postgres(conn, rows)
                except Exception as exc:
                    if getattr(exc, "sqlstate", None) != "23514":
                        raise
                    # no partition for a line: one was dropped (by retention on another server)
                    # since this store read which exist; read again and try once more
                    conn.rollback()
                    self._weeks.clear()
                    self._run_day.clear()
                    self._write_lines_postgres(conn, rows)
            conn.commit()
        except BaseException:
            try:
                conn.rollback()
            except Exception:
                # the connection is gone (server restart, network): the next batch opens a new one
                self._raw = None
                conn.invalidate()
            raise

    @staticmethod
    def _write_lines_sqlite(conn: Any, rows: Sequence[LogRow]) -> None:
        cur = conn.cursor()
        try:
            cur.execute("SELECT coalesce(max(id), 0) FROM log_line")
            first = cur.fetchone()[0]
            # Multi-row INSERTs rather than executemany: executemany hands the interpreter lock
            # back and forth for every row, and while the event loop is busy each hand-back waits
            # for it; one statement per chunk does it once per chunk (and runs twice as fast).
            # Chunks of 512 rows, then halves for the rest: few statement shapes, all cached.
            size = _insert_chunk(conn.driver_connection)
            start, total = 0, len(rows)
            while start < total:
                while total - start < size:
                    size //= 2
                cur.execute(
                    _insert_lines_sql(size), list(chain.from_iterable(rows[start : start + size]))
                )
                start += size
            cur.execute(
                "INSERT INTO log_fts(rowid, text) SELECT id, text FROM log_line WHERE id > ?",
                (first,),
            )
        finally:
            cur.close()

    def read_lines(
        self,
        run_id: int,
        *,
        after_seq: int = 0,
        limit: int | None = None,
        levels: Iterable[str] | None = None,
        grep: str | None = None,
    ) -> list[LogLine]:
        """A run's stored lines after a sequence number, optionally filtered."""
        with self.session() as s:
            if grep and not self.is_sqlite:
                # through the chunk index: only the lines of chunks holding the text are read
                day = self.line_day(s, run_id)
                rows = chunk_matches(
                    s, _LINE_FIELDS, run_id, grep, limit, list(levels or ()), after_seq, day
                )
                return [LogLine(**dict(zip(_FIELD_NAMES, row, strict=True))) for row in rows]
            q = select(LogLine).where(self._of_run(s, run_id), LogLine.seq > after_seq)
            if levels:
                q = q.where(of_levels(self.is_sqlite, list(levels)))
            if grep:
                q = q.where(self._contains(col(LogLine.text), grep))
            q = q.order_by(col(LogLine.seq))
            if limit:
                q = q.limit(limit)
            return list(s.exec(q))

    def read_job_lines(
        self,
        job_id: int,
        after_id: int = 0,
        limit: int = 5000,
        hosts: Collection[str] | None = None,
    ) -> list[Any]:
        """Lines of every run of a job in arrival order (by row id), after a row id: rows with
        the fields of LogLine (id, run_id, seq, ts, stream, level, text); with `hosts`, only
        of the runs on those hosts."""
        with self.engine.connect() as conn:
            return self._job_lines(conn, job_id, after_id, limit, hosts)

    @staticmethod
    def _job_lines(
        conn: Any, job_id: int, after_id: int, limit: int, hosts: Collection[str] | None = None
    ) -> list[Any]:
        if conn.dialect.name == "postgresql":
            return job_lines(conn, job_id, after_id, limit, hosts)
        params = {"job_id": job_id, "after_id": after_id, "limit": limit}
        statement = sql.JOB_LINES
        if hosts is not None:
            statement = statement.where(sql.RUN.c.host.in_(sorted(hosts)))
        return list(conn.execute(statement, params))

    def count_output_lines(self, run_id: int) -> int:
        """Stored stdout and stderr lines of a run (system lines excluded)."""
        with self.session() as s:
            value = s.exec(
                select(func.count()).where(self._of_run(s, run_id), LogLine.stream != "system")
            ).one()
            return int(value or 0)

    def output_bytes(self, run_id: int) -> int:
        """Characters of stored output of a run (the head already kept, after a restart)."""
        with self.session() as s:
            value = s.exec(
                select(func.sum(func.length(LogLine.text))).where(
                    self._of_run(s, run_id), LogLine.stream != "system"
                )
            ).one()
            return int(value or 0)

    def max_seq(self, run_id: int) -> int:
        """The highest stored sequence number of a run (0 when none)."""
        with self.session() as s:
            value = s.exec(select(func.max(LogLine.seq)).where(self._of_run(s, run_id))).one()
            return int(value or 0)

    def resume_point(self, run_id: int) -> tuple[int, int, int]:
        """What a run re-attached by a new server process continues after, in one query: its
        stored output lines (`count_output_lines`), its highest seq (`max_seq`) and the
        characters of its stored output (`output_bytes`)."""
        with self.session() as s:
            # a Core statement on the session's connection: no ORM compilation per run
            lines, top, chars = (
                s.connection()
                .execute(core_select(*RESUME_COLUMNS).where(self._of_run(s, run_id)))
                .one()
            )
            return int(lines or 0), int(top or 0), int(chars or 0)

    def resume_points(self, run_ids: Sequence[int]) -> dict[int, tuple[int, int, int]]:
        """`resume_point` of many runs (a fleet's re-attached runs after a hand-off), by run id,
        in one grouped query per thousand; a run with no line stored is not in the answer."""
        if len(run_ids) == 1:  # one run: its partition alone (see `_of_run`)
            return {run_ids[0]: self.resume_point(run_ids[0])}
        out: dict[int, tuple[int, int, int]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(run_ids), 1000):
                chunk = list(run_ids[start : start + 1000])
                q = (
                    core_select(sql.LOG_LINE.c.run_id, *RESUME_COLUMNS)
                    .where(sql.LOG_LINE.c.run_id.in_(chunk))
                    .group_by(sql.LOG_LINE.c.run_id)
                )
                for run_id, lines, top, chars in conn.execute(q):
                    out[int(run_id)] = (int(lines or 0), int(top or 0), int(chars or 0))
        return out

    def line_stats(self, run_id: int) -> tuple[int, int]:
        """Count of stored lines and the highest seq (they are equal when nothing is missing)."""
        with self.session() as s:
            count, top = s.exec(
                select(func.count(), func.max(LogLine.seq)).where(self._of_run(s, run_id))
            ).one()
            return int(count or 0), int(top or 0)

    def _runs_with_text(
        self, needle: str, since: datetime | None = None, until: datetime | None = None
    ) -> Any:
        """A subquery of the ids of runs whose output contains a phrase; on PostgreSQL `since`
        and `until` (of the runs' creation) leave out the weeks no such run is in."""
        from sqlalchemy import Text, column, exists, false, table

        needle = needle.replace("\x00", "")
        if not needle.strip():  # an empty phrase matches nothing, as in FTS5
            return select(LogLine.run_id).where(false())
        if self.is_sqlite:
            phrase = '"' + needle.replace('"', '""') + '"'
            matching = (
                text("SELECT rowid FROM log_fts WHERE log_fts MATCH :phrase")
                .bindparams(phrase=phrase)
                .columns(column("rowid"))
            )
            return select(LogLine.run_id).where(col(LogLine.id).in_(matching)).distinct()
        # The chunks' trigram index finds the chunks holding the text. A needle without a newline
        # that a chunk holds is held by one of its lines (lines are joined by newlines); one with
        # a newline is confirmed on the lines.
        pattern, escape = like_pattern(needle)
        chunk = table(
            "log_chunk",
            column("run_id"),
            column("first_seq"),
            column("last_seq"),
            column("text", Text),
            column("day"),
        )
        found = select(chunk.c.run_id).where(chunk.c.text.ilike(pattern, escape=escape))
        if since is not None:
            found = found.where(chunk.c.day >= day_of(since))
        if until is not None:
            found = found.where(chunk.c.day <= day_of(until))
        if "\n" in needle:
            found = found.where(
                exists(
                    select(1).where(
                        LogLine.run_id == chunk.c.run_id,
                        col(LogLine.seq).between(chunk.c.first_seq, chunk.c.last_seq),
                        self._contains(col(LogLine.text), needle),
                    )
                )
            )
        return found.select_from(chunk).distinct()

    def count_lines(self, run_id: int, levels: Sequence[str] | None = None) -> tuple[int, int]:
        """How many stored lines of a run have one of the levels (all when None), and the top seq."""
        with self.session() as s:
            top = s.exec(select(func.max(LogLine.seq)).where(self._of_run(s, run_id))).one()
            if not levels:
                return int(top or 0), int(top or 0)
            where = [self._of_run(s, run_id)]
            count = count_of_levels(s, self.is_sqlite, where, levels, int(top or 0))
            return count, int(top or 0)

    def line_window(
        self,
        run_id: int,
        *,
        offset: int,
        limit: int,
        levels: Sequence[str] | None = None,
        after_seq: int | None = None,
    ) -> list[LogLine]:
        """Lines at positions offset..offset+limit-1 of a run's (level-filtered) log.

        Unfiltered, position p is seq p+1 (seqs have no gaps). Filtered, `after_seq` (the seq of
        the line just before `offset`, when the caller knows it) avoids counting from the start.
        """
        with self.session() as s:
            q = select(LogLine).where(self._of_run(s, run_id))
            if not levels:
                q = q.where(LogLine.seq > offset, LogLine.seq <= offset + limit)
                return list(s.exec(q.order_by(col(LogLine.seq))))
            q = q.where(of_levels(self.is_sqlite, levels))
            if after_seq is not None:
                q = q.where(LogLine.seq > after_seq).order_by(col(LogLine.seq)).limit(limit)
            else:
                q = q.order_by(col(LogLine.seq)).offset(offset).limit(limit)
            return list(s.exec(q))

    def _contains(self, column: Any, needle: str) -> Any:
        """`column` contains `needle` as literal text, ignoring case.

        SQLite's `LIKE` already ignores case (of ASCII letters, as its `lower()` does), and
        reads each row once; `ilike` would add `lower()` on both sides and take twice as long.
        The needle is a bound parameter, so quotes and any other syntax are just characters.
        """
        pattern, escape = like_pattern(needle)
        if self.is_sqlite:
            return column.like(pattern, escape=escape)
        return column.ilike(pattern, escape=escape)

    def search_lines(
        self, run_id: int, needle: str, *, levels: Sequence[str] | None = None, limit: int = 10000
    ) -> list[tuple[int, int]]:
        """(seq, position in the level-filtered log) of lines containing `needle`, ignoring case."""
        with self.session() as s:
            found = None
            if self.is_sqlite:
                found = self._search_by_index(s, run_id, needle, limit, levels)
            else:
                found = self._search_by_chunks(s, run_id, needle, limit, levels)
            if found is None:
                q = select(LogLine.seq).where(
                    self._of_run(s, run_id), self._contains(col(LogLine.text), needle)
                )
                if levels:
                    q = q.where(of_levels(self.is_sqlite, levels))
                found = [int(seq) for seq in s.exec(q.order_by(col(LogLine.seq)).limit(limit))]
            if not levels or not found:
                return [(seq, seq - 1) for seq in found]
            return list(zip(found, self._positions(s, run_id, found, levels), strict=True))

    def _positions(
        self, s: Session, run_id: int, seqs: list[int], levels: Sequence[str]
    ) -> list[int]:
        """Positions of lines (sorted seqs, all of the given levels) in the level-filtered log.

        A line's position is the number of lines of those levels before it or, as seqs have no
        gaps, its seq - 1 minus the lines of the other levels before it. The seqs of the other
        levels are read first (usually few: DEBUG lines hidden), up to `POSITION_MARKS`; if
        there are more, those of the chosen levels (few when only ERROR is shown); if both sides
        are large, all of the other levels'. The level index is read in seq order and the
        positions are found by bisection.
        """
        last = seqs[-1]

        def marks(names: Sequence[str], most: int | None) -> list[int] | None:
            # one query per level: each reads its index range in seq order and can stop early
            out: list[int] = []
            for name in names:
                q = (
                    select(LogLine.seq)
                    .where(
                        self._of_run(s, run_id),
                        of_levels(self.is_sqlite, [name]),
                        LogLine.seq < last,
                    )
                    .order_by(col(LogLine.seq))
                )
                if most is not None:
                    q = q.limit(most - len(out) + 1)
                out += s.exec(q).all()
                if most is not None and len(out) > most:
                    return None
            return sorted(out)

        others = [lv for lv in LEVELS if lv not in levels]
        hidden = marks(others, POSITION_MARKS)
        if hidden is None:
            shown = marks(levels, POSITION_MARKS)
            if shown is not None:
                return [bisect_left(shown, seq) for seq in seqs]
            hidden = marks(others, None) or []
        return [seq - 1 - bisect_left(hidden, seq) for seq in seqs]

    def _search_by_index(
        self,
        s: Session,
        run_id: int,
        needle: str,
        limit: int,
        levels: Sequence[str] | None = None,
    ) -> list[int] | None:
        """Seqs of a run's lines containing `needle`, from the few lines the full-text index
        names; None when the index cannot narrow the search enough (then every line is read).

        Every line that contains the needle has the needle's inner words as whole words, and
        its last word as the start of one (see `index_words`), so the index gives a superset;
        `LIKE` then keeps exactly the lines that contain the needle. This relies on every stored
        line being in the index, as `write_lines` keeps it (the runs list's text filter relies on
        the same): whatever writes `log_line` rows must index them too.
        """
        conn = s.connection()

        def few(query: str) -> bool:
            count = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT rowid FROM log_fts WHERE log_fts MATCH :q "
                    "LIMIT :most)"
                ),
                {"q": query, "most": INDEX_CANDIDATES + 1},
            ).scalar_one()
            return bool(count <= INDEX_CANDIDATES)

        words, prefix = index_words(needle)
        if words:
            probes = [f'"{w}"' for w in words[:3]]
        elif prefix is not None and few(f'"{prefix}"'):
            # A prefix query reads every word it covers: asked only when the word itself is rare.
            probes = [f'"{prefix}" *']
        else:
            return None
        query = next((probe for probe in probes if few(probe)), None)
        if query is None:
            return None
        pattern, escape = like_pattern(needle)
        params: dict[str, Any] = {
            "q": query,
            "run": run_id,
            "pattern": pattern,
            "escape": escape,
            "limit": limit,
        }
        where = ""
        if levels:
            names = [f"lv{i}" for i in range(len(levels))]
            where = " AND l.level IN (" + ", ".join(":" + n for n in names) + ")"
            params.update(zip(names, levels, strict=True))
        rows = conn.execute(
            text(
                "SELECT l.seq FROM (SELECT rowid AS id FROM log_fts WHERE log_fts MATCH :q) AS f "
                "CROSS JOIN log_line AS l ON l.id = f.id "
                "WHERE l.run_id = :run AND l.text LIKE :pattern"
                + (" ESCAPE :escape" if escape else "")
                + where
                + " ORDER BY l.seq LIMIT :limit"
            ),
            params,
        )
        return [int(r[0]) for r in rows]

    def line_tuples(
        self, run_id: int, after_seq: int = 0, limit: int = 10000
    ) -> list[tuple[int, float, str, str, str]]:
        """(seq, ts, stream, level, text) of a run's lines after a seq: no ORM objects, for bulk reads."""
        with self.session() as s:
            day = None if self.is_sqlite else self.line_day(s, run_id)
            rows = s.connection().execute(
                text(
                    "SELECT seq, ts, stream, level, text FROM log_line "
                    "WHERE run_id = :run AND seq > :after"
                    + ("" if day is None else " AND day = :day")
                    + " ORDER BY seq LIMIT :limit"
                ),
                {"run": run_id, "after": after_seq, "limit": limit, "day": day},
            )
            return [(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def first_lines(
        self, run_ids: Sequence[int], upto: int, chars: int
    ) -> dict[int, list[tuple[int, str, str]]]:
        """(seq, stream, text cut to `chars`) of each run's lines numbered up to `upto`, in
        order, by run: a few queries for many runs (the job page's grouped view)."""
        out: dict[int, list[tuple[int, str, str]]] = {r: [] for r in run_ids}
        with self.session() as s:
            conn = s.connection()
            for start in range(0, len(run_ids), 500):
                chunk = list(run_ids[start : start + 500])
                query = (
                    select(
                        LogLine.run_id,
                        LogLine.seq,
                        LogLine.stream,
                        func.substr(LogLine.text, 1, chars),
                    )
                    .where(col(LogLine.run_id).in_(chunk), LogLine.seq <= upto)
                    .order_by(col(LogLine.run_id), col(LogLine.seq))
                )
                for run_id, seq, stream, line in conn.execute(query).all():
                    out[run_id].append((seq, stream, line))
        return out
