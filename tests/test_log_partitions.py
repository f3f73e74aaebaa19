"""Log storage: exactly once under retried writes (both backends); on PostgreSQL, weekly
partitions that retention drops whole, and revision 0011 moving the lines already stored."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from easytask.scheduler.retention import Retention
from easytask.store.db import Store, make_engine, sqlite_url
from easytask.store.lines import LogRow
from easytask.store.models import Job, Run
from easytask.store.pglog import day_of, partition_names, week_of
from easytask.store.schema import head_revision, upgrade
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
