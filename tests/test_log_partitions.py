"""Log storage: exactly once under retried writes (both backends); on PostgreSQL, weekly
partitions that retention drops whole, and revision 0011 moving the lines already stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text

from easytask.scheduler.retention import Retention
from easytask.store import pglog
from easytask.store.db import Store, make_engine, sqlite_url
from easytask.store.lines import LogRow
from easytask.store.models import Job, Run
from easytask.store.pglog import day_of, partition_names, week_of
from easytask.store.schema import alembic_config, head_revision, upgrade
from tests.support import PostgresCluster, db_execute


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        url = cluster.new_database(empty=True)
    else:
        url = sqlite_url(tmp_path / "easytask.db")
    st = Store(url)
    st.create_schema()
    yield st
    st.close()


@pytest.fixture
def pg_store(postgres: PostgresCluster) -> Iterator[Store]:
    st = Store(postgres.new_database(empty=True))
    st.create_schema()
    yield st
    st.close()


def _run(store: Store, host: str = "h") -> int:
    _, (run,) = store.create_job(Job(command="x"), [Run(host=host, command="x")])
    assert run.id is not None
    return run.id


def _rows(run_id: int, first: int, last: int, word: str = "line") -> list[LogRow]:
    return [(run_id, i, 0.0, "stdout", "INFO", f"{word} {i} end") for i in range(first, last + 1)]


def test_a_batch_written_again_stores_each_line_once(store: Store) -> None:
    """A batch whose commit's answer was lost is written again, whole or overlapping newer
    lines: every line is stored and indexed once, the new ones too, and nothing fails."""
    run = _run(store)
    other = _run(store)
    store.write_lines(_rows(run, 1, 100) + _rows(other, 1, 10))
    store.write_lines(_rows(run, 1, 100) + _rows(other, 1, 10))  # the same batch again
    store.write_lines(_rows(run, 50, 150))  # half stored already, half new
    assert store.line_stats(run) == (150, 150)
    assert store.line_stats(other) == (10, 10)
    assert [line.seq for line in store.read_lines(run)] == list(range(1, 151))
    assert store.search_lines(run, "line 77 end") == [(77, 76)]
    assert store.search_lines(run, "line 120 end") == [(120, 119)]
    assert store.search_lines(other, "line 7 end") == [(7, 6)]
    assert [r.id for r, _ in store.find_runs(text="line 120 end")] == [run]
    if not store.is_sqlite:  # every stored line is in exactly one chunk of the index
        covered = db_execute(
            store.url,
            "SELECT sum(array_length(string_to_array(text, E'\\n'), 1)) FROM log_chunk "
            "WHERE run_id = :r",
            {"r": run},
        )
        assert covered == [(150,)]


def _pages(store: Store, job_id: int, limit: int, hosts: set[str] | None = None) -> list[str]:
    """A job's lines as its event stream reads them: page after page from the last id."""
    out: list[str] = []
    after = 0
    while True:
        with store.engine.connect() as conn:
            page = store._job_lines(conn, job_id, after, limit, hosts)
        assert len(page) <= limit
        out += [f"{line.run_id}:{line.text}" for line in page]
        if len(page) < limit:
            return out
        after = page[-1].id


@pytest.mark.parametrize("block", [None, 16])
def test_a_job_stream_reads_its_lines_in_arrival_order_page_by_page(
    store: Store, block: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines of several runs, written in interleaved batches (one written again, one lone line
    per batch) come back in the order they arrived, once each, whatever the page size, and
    only those of the hosts asked for. With blocks of 16 ids on PostgreSQL a batch takes
    several blocks, and a page may begin inside chunks that began before it."""
    if block is not None:
        if store.is_sqlite:
            pytest.skip("ids come in blocks on PostgreSQL only")
        monkeypatch.setattr(pglog, "ID_BLOCK", block)
    job, runs = store.create_job(Job(command="x"), [Run(host=h, command="x") for h in "abc"])
    a, b, c = (r.id or 0 for r in runs)
    other = _run(store)  # another job's lines in the same batches
    arrived: list[str] = []
    seqs = {a: 0, b: 0, c: 0, other: 0}
    for batch in range(12):
        rows: list[LogRow] = []
        for i in range(40):
            run = (a, b, other)[i % 3] if batch % 2 else (b, a, a, other)[i % 4]
            seqs[run] += 1
            rows.append((run, seqs[run], 0.0, "stdout", "INFO", f"{batch}.{i}"))
        seqs[c] += 1
        rows.append((c, seqs[c], 0.0, "stdout", "INFO", f"{batch}.lone"))
        store.write_lines(rows)
        if batch == 5:
            store.write_lines(rows)  # the same batch again: nothing new
        arrived += [f"{r[0]}:{r[5]}" for r in rows if r[0] != other]
    assert len(arrived) == len(set(arrived)) == 12 * 41 - sum(
        1 for batch in range(12) for i in range(40)
        if ((a, b, other)[i % 3] if batch % 2 else (b, a, a, other)[i % 4]) == other
    )  # fmt: skip
    for limit in (1, 7, 100, 5000):
        assert _pages(store, job.id or 0, limit) == arrived, limit
    only_c = [line for line in arrived if line.startswith(f"{c}:")]
    assert _pages(store, job.id or 0, 5, {"c"}) == only_c
    assert _pages(store, job.id or 0, 5, set()) == []
    assert [f"{r.run_id}:{r.text}" for r in store.read_job_lines(job.id or 0, 0, 10)] == (
        arrived[:10]
    )


def _age(store: Store, run_id: int, days: float, state: str) -> None:
    """Make a run as if created and ended `days` ago, before any of its lines is written."""
    when = datetime.now(UTC) - timedelta(days=days)
    db_execute(
        store.url,
        "UPDATE run SET created_at = :t, finished_at = :t, state = :s WHERE id = :id",
        {"t": when, "s": state, "id": run_id},
    )


def _partitions(store: Store) -> set[str]:
    rows = db_execute(
        store.url,
        "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
        "WHERE i.inhparent IN ('log_line'::regclass, 'log_chunk'::regclass)",
    )
    return {name for (name,) in rows}


@pytest.mark.postgres
def test_retention_drops_a_past_week_whole_and_deletes_rows_where_runs_stay(
    pg_store: Store,
) -> None:
    """A week whose runs are all past retention loses its partitions (no row deleted one by
    one); a week holding a run to keep stays, only its old runs' lines and chunks go."""
    store = pg_store
    gone_ok = _run(store, "a")  # 5 weeks ago, success: its week goes whole
    mixed_ok = _run(store, "b")  # 3 weeks ago, success: deleted row by row
    mixed_failed = _run(store, "c")  # 3 weeks ago, failed: kept (failures stay a year)
    fresh = _run(store, "d")
    _age(store, gone_ok, 35, "success")
    _age(store, mixed_ok, 21, "success")
    _age(store, mixed_failed, 21, "failed")
    _age(store, fresh, 0, "success")
    for run in (gone_ok, mixed_ok, mixed_failed, fresh):
        store.write_lines(_rows(run, 1, 200, word=f"run{run}"))
    other = Store(store.url)  # another server's store: it knows the old week's partitions
    other.write_lines(_rows(gone_ok, 201, 201, word=f"run{gone_ok}"))
    now = datetime.now(UTC)
    old_week = week_of(day_of(now - timedelta(days=35)))
    mixed_week = week_of(day_of(now - timedelta(days=21)))
    assert set(partition_names(old_week)) <= _partitions(store)
    assert set(partition_names(mixed_week)) <= _partitions(store)

    # the runs list's date filter leaves out the weeks outside it, and finds what is inside
    needle = f"run{mixed_failed} 150 end"
    assert [r.id for r, _ in store.find_runs(text=needle, since=now - timedelta(days=28))] == [
        mixed_failed
    ]
    assert store.find_runs(text=needle, since=now - timedelta(days=7)) == []
    assert store.find_runs(text=needle, until=now - timedelta(days=28)) == []

    retention = Retention(store, retention=7 * 86400.0, retention_failed=365 * 86400.0)
    result = asyncio.run(retention.prune())
    assert (result["runs"], result["lines"]) == (2, 401)

    left = _partitions(store)
    assert not set(partition_names(old_week)) & left  # dropped, not emptied
    assert set(partition_names(mixed_week)) <= left
    assert set(partition_names(week_of(day_of(now)))) <= left  # this week and the next stay
    assert set(partition_names(week_of(day_of(now)) + 7)) <= left
    runs = [r for (r,) in db_execute(store.url, "SELECT id FROM run ORDER BY id")]
    assert runs == [mixed_failed, fresh]
    for run, count in ((gone_ok, 0), (mixed_ok, 0), (mixed_failed, 200), (fresh, 200)):
        assert store.line_stats(run)[0] == count
        chunks = db_execute(
            store.url, "SELECT count(*) FROM log_chunk WHERE run_id = :r", {"r": run}
        )
        assert (chunks[0][0] > 0) == (count > 0)
    assert store.search_lines(mixed_failed, f"run{mixed_failed} 150 end") == [(150, 149)]
    assert [r.id for r, _ in store.find_runs(text=f"run{gone_ok} 1 end")] == []
    # the other store still believes the dropped week exists: a late line of a run that went
    # with it is not stored (its run is gone), and new lines are stored as ever
    late = _run(store, "e")
    other.write_lines(_rows(gone_ok, 202, 202) + _rows(late, 1, 5))
    other.close()
    assert store.line_stats(late) == (5, 5)
    assert store.line_stats(gone_ok) == (0, 0)


@pytest.mark.postgres
def test_revision_0011_moves_the_lines_of_0009_into_partitions(postgres: PostgresCluster) -> None:
    """Lines stored under 0009's schema are intact and searchable after the upgrade, in the
    partition of their run's week, and new lines follow them."""
    url = postgres.new_database(empty=True)
    engine = make_engine(url)
    upgrade(engine, "0009")
    engine.dispose()
    store = Store(url)
    try:
        old_run = _run(store, "old")
        new_run = _run(store, "new")
        _age(store, old_run, 40, "success")
        lines = [
            (old_run, i, 1.5, "stdout" if i % 3 else "stderr", "ERROR" if i % 7 == 0 else "INFO",
             f"old run line {i} tab\there")
            for i in range(1, 301)
        ] + [(new_run, i, 2.5, "stdout", "INFO", f"new run line {i}") for i in range(1, 71)]  # fmt: skip
        with store.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO log_line (run_id, seq, ts, stream, level, text) "
                    "VALUES (:r, :s, :t, :st, :lv, :x)"
                ),
                [dict(zip(("r", "s", "t", "st", "lv", "x"), row, strict=True)) for row in lines],
            )
        ids = db_execute(url, "SELECT id, run_id, seq FROM log_line ORDER BY id")
        store.create_schema()
        assert store.schema_state().current == head_revision()

        assert db_execute(url, "SELECT id, run_id, seq FROM log_line ORDER BY id") == ids
        stored = [
            (r.run_id, r.seq, r.ts, r.stream, r.level, r.text)
            for r in store.read_lines(old_run) + store.read_lines(new_run)
        ]
        assert stored == lines
        week = partition_names(week_of(day_of(datetime.now(UTC) - timedelta(days=40))))[0]
        assert db_execute(url, f"SELECT count(*) FROM {week}") == [(300,)]
        assert store.search_lines(old_run, "line 123 tab") == [(123, 122)]
        assert store.search_lines(old_run, "line 14 ", levels=["ERROR"]) == [(14, 1)]
        assert [r.id for r, _ in store.find_runs(text="new run line 70")] == [new_run]
        store.write_lines(_rows(new_run, 71, 80, word="after"))
        assert store.line_stats(new_run) == (80, 80)
        assert store.search_lines(new_run, "after 75") == [(75, 74)]
        assert db_execute(url, "SELECT max(id) > :m FROM log_line", {"m": ids[-1][0]}) == [(True,)]
    finally:
        store.close()


@pytest.mark.postgres
def test_reads_of_a_run_name_its_week_so_only_its_partition_is_planned(pg_store: Store) -> None:
    """Every read of one run's lines carries the run's `day` (planning a query over every
    week's partition costs more than the query), and gives the same lines as before."""
    from sqlalchemy import event

    store = pg_store
    old, new = _run(store, "old"), _run(store, "new")
    _age(store, old, 20, "success")
    store.write_lines(_rows(old, 1, 100) + _rows(new, 1, 100, word="fresh"))
    other = Store(store.url)  # a store that did not write them: it reads the day from the lines
    seen: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if "log_line" in statement:
            seen.append(statement)

    event.listen(other.engine, "before_cursor_execute", record)
    try:
        assert [line.seq for line in other.read_lines(old, after_seq=90)] == list(range(91, 101))
        assert [line.seq for line in other.line_window(old, offset=10, limit=5)] == [
            11, 12, 13, 14, 15
        ]  # fmt: skip
        assert other.line_stats(old) == (100, 100)
        assert other.count_lines(old, ["INFO"]) == (100, 100)
        assert other.search_lines(old, "line 42 end") == [(42, 41)]
        assert [line.seq for line in other.read_lines(new, grep="fresh 7 ")] == [7]
        assert [t[0] for t in other.line_tuples(old, after_seq=98)] == [99, 100]
    finally:
        other.close()
    reads = [q for q in seen if "LIMIT 1" not in q]  # the one read of each run's day
    assert len(reads) >= 7
    assert all("day = " in q for q in reads), reads


@pytest.mark.postgres
def test_revision_0015_keeps_one_btree_per_line_and_builds_the_chunks_again(
    postgres: PostgresCluster,
) -> None:
    """Lines and chunks stored under 0014 (ids one by one) are read, searched, filtered and
    streamed in id order after 0015; INFO lines are left out of the level index, no index on
    the lines' ids is kept, new lines get ids after the old ones; and 0015 goes back down."""
    url = postgres.new_database(empty=True)
    engine = make_engine(url)
    upgrade(engine, "0014")
    engine.dispose()
    store = Store(url)
    try:
        job, runs = store.create_job(Job(command="x"), [Run(host=h, command="x") for h in "ab"])
        a, b = (r.id or 0 for r in runs)
        day = db_execute(url, f"SELECT {pglog.RUN_DAY} FROM run WHERE id = :r", {"r": a})[0][0]
        for week in (week_of(day), week_of(day) + 7):
            for statement in pglog.partition_ddl(week):
                db_execute(url, statement)
        lines = [
            (run, i, "ERROR" if i % 10 == 0 else "INFO", f"{'ab'[k]} old {i}")
            for i in range(1, 101)
            for k, run in enumerate((a, b))
        ]
        for run, seq, level, line in lines:  # 0014's own ids, one by one
            db_execute(
                url,
                "INSERT INTO log_line (run_id, seq, ts, stream, level, text, day) "
                "VALUES (:r, :s, 1.0, 'stdout', :lv, :x, :d)",
                {"r": run, "s": seq, "lv": level, "x": line, "d": day},
            )
        db_execute(
            url,
            "INSERT INTO log_chunk (run_id, first_seq, last_seq, day, text) "
            "SELECT run_id, min(seq), max(seq), day, string_agg(text, E'\\n' ORDER BY seq) "
            "FROM log_line GROUP BY run_id, day, (seq - 1) / 64",
        )
        old_max = db_execute(url, "SELECT max(id) FROM log_line")[0][0]
        store.create_schema()
        assert store.schema_state().current == head_revision()

        indexes = dict(db_execute(url, "SELECT indexname, indexdef FROM pg_indexes "
                                       "WHERE tablename IN ('log_line', 'log_chunk')"))  # fmt: skip
        assert "ix_log_line_id" not in indexes
        assert "WHERE ((level)::text <> 'INFO'::text)" in indexes["ix_log_line_run_level_seq"]
        assert "(first_id)" in indexes["ix_log_chunk_first_id"]
        arrived = [f"{run}:{line}" for run, _, _, line in lines]
        assert _pages(store, job.id or 0, 7) == arrived
        assert store.search_lines(a, "a old 55") == [(55, 54)]
        assert store.count_lines(a, ["ERROR"]) == (10, 100)
        assert store.count_lines(a, ["INFO"]) == (90, 100)
        assert [line.seq for line in store.line_window(a, offset=2, limit=2, levels=["ERROR"])] == [
            30, 40
        ]  # fmt: skip
        store.write_lines([(a, 101, 2.0, "stdout", "INFO", "a new 101")])
        store.write_lines([(b, 101, 2.0, "stdout", "INFO", "b new 101")])
        assert _pages(store, job.id or 0, 7) == arrived + [f"{a}:a new 101", f"{b}:b new 101"]
        assert db_execute(url, "SELECT min(id) > :m FROM log_line WHERE seq = 101", {"m": old_max})[
            0
        ][0]
        assert store.search_lines(b, "b new 101") == [(101, 100)]
    finally:
        store.close()

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0014")
    finally:
        engine.dispose()
    indexes = dict(db_execute(url, "SELECT indexname, indexdef FROM pg_indexes "
                                   "WHERE tablename IN ('log_line', 'log_chunk')"))  # fmt: skip
    assert "ix_log_line_id" in indexes and "WHERE" not in indexes["ix_log_line_run_level_seq"]
    assert db_execute(
        url, "SELECT count(*), max(seq) FROM log_line WHERE run_id = :r", {"r": a}
    ) == [(101, 101)]
    columns = db_execute(
        url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'log_chunk'"
    )
    assert ("first_id",) not in columns
