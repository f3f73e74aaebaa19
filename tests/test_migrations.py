"""Schema revisions: they build what the models describe; servers refuse stale schemas."""

from __future__ import annotations

import shlex
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlmodel import SQLModel

from easytask.store.db import Store, make_engine, sqlite_url
from easytask.store.models import as_utc
from easytask.store.schema import head_revision, schema_state, upgrade
from tests.conftest import ServerFactory
from tests.support import PostgresCluster, db_execute, easytask_cmd, free_port

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]

OLD_USER_TABLE = (
    'CREATE TABLE "user" (id {id} PRIMARY KEY, name VARCHAR NOT NULL UNIQUE, '
    "password_hash VARCHAR NOT NULL, role VARCHAR NOT NULL, disabled BOOLEAN NOT NULL, "
    "created_at TIMESTAMP NOT NULL)"
)
OLD_USER_ROW = (
    'INSERT INTO "user" (name, password_hash, role, disabled, created_at) '
    "VALUES ('old', '', 'operator', false, '2024-01-01 00:00:00')"
)


def _empty_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "postgres":
        cluster: PostgresCluster = request.getfixturevalue("postgres")
        return cluster.new_database(empty=True)
    return sqlite_url(tmp_path / "easytask.db")


def _execute(url: str, *statements: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        engine.dispose()


def _server(url: str, state: Path) -> subprocess.CompletedProcess[str]:
    """Run a server that is expected to refuse to start; its exit code and output."""
    args = easytask_cmd(
        "server",
        "--state-dir",
        str(state),
        "--db",
        url,
        "--agents",
        f"127.0.0.1:{free_port()}",
        "--http",
        f"127.0.0.1:{free_port()}",
        "--inventory",
        str(state / "no-inventory"),
        "--playbooks",
        str(state / "no-playbooks"),
    )
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def _partitioned_log(diff: Any) -> bool:
    """A difference from the models that PostgreSQL's partitioned log tables make on purpose:
    the chunk table and every partition; on log_line, the partition key `day` in the unique
    key, no primary key (a job's stream reads lines by id through the chunks, revision 0015),
    and no foreign key to run (retention drops a week's lines with their partition)."""
    kind = diff[0]
    if kind == "remove_column":
        return bool(diff[2] == "log_line" and diff[3].name == "day")
    item = diff[1]
    name = getattr(getattr(item, "table", item), "name", "")
    if name.startswith(("log_chunk", "log_line_w")):
        return True
    if name == "log_line":
        return kind == "add_fk" or getattr(item, "name", "") == "uq_log_line_run_seq"
    return False


@pytest.mark.parametrize("backend", BACKENDS)
def test_revisions_build_the_schema_the_models_describe(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """Upgrading an empty database gives exactly the tables, columns and indexes of the models."""
    url = _empty_url(backend, request, tmp_path)
    engine = make_engine(url)
    try:
        assert schema_state(engine).empty
        upgrade(engine)
        state = schema_state(engine)
        assert state.up_to_date and state.current == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), SQLModel.metadata
            )
            # the search index lives beside the models: FTS5 tables on SQLite, the chunk table
            # and the weekly partitions on PostgreSQL (see revision 0011)
            extra = [
                d
                for d in diff
                if not (d[0] == "remove_table" and d[1].name.startswith("log_fts"))
                and not (backend == "postgres" and _partitioned_log(d))
            ]
            assert extra == []
            names = {t for t in conn.dialect.get_table_names(conn)}
            assert ("log_fts" in names) == (backend == "sqlite")
            assert ("log_chunk" in names) == (backend == "postgres")
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_refuses_an_old_schema_until_db_upgrade(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, start_server: ServerFactory
) -> None:
    """A database from before revisions stops the server with the exact command; it then works."""
    url = _empty_url(backend, request, tmp_path)
    serial = "SERIAL" if backend == "postgres" else "INTEGER"
    _execute(url, OLD_USER_TABLE.format(id=serial), OLD_USER_ROW)
    refused = _server(url, tmp_path / "refused")
    assert refused.returncode == 3, refused.stderr
    assert "database schema is out of date" in refused.stderr
    assert "revision none" in refused.stderr
    command = refused.stderr.rsplit("then run: ", 1)[1].strip()
    assert command == f"easytask db upgrade --db '{url}'"

    fixed = subprocess.run(
        easytask_cmd(*shlex.split(command)[1:]), capture_output=True, text=True, timeout=120
    )
    assert fixed.returncode == 0, fixed.stderr
    assert f"upgraded from revision none to {head_revision()}" in fixed.stdout

    server = start_server(None, "--db", url)
    assert server.get("/api/users")  # the server is up and reads the adopted table
    store = Store(url)
    try:
        user = store.get_user("old")
        assert user is not None and user.scope == "" and user.role == "operator"
        assert as_utc(user.created_at) == datetime(2024, 1, 1, tzinfo=UTC)
    finally:
        store.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_refuses_a_schema_from_a_newer_release(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A revision this release does not know stops the server and `db upgrade` alike."""
    url = _empty_url(backend, request, tmp_path)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    _execute(url, "UPDATE alembic_version SET version_num = 'f00d'")
    refused = _server(url, tmp_path / "state")
    assert refused.returncode == 3
    assert "schema revision f00d, which this release of EasyTask does not know" in refused.stderr
    again = subprocess.run(
        easytask_cmd("db", "upgrade", "--db", url), capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 3 and "made by a newer one" in again.stderr


def test_db_commands_on_the_default_sqlite_file(tmp_path: Path) -> None:
    """`db current` reports an empty or stale database (exit 1); `db upgrade` brings it to head."""
    state = tmp_path / "state"
    missing = subprocess.run(
        easytask_cmd("db", "current", "--state-dir", str(state)), capture_output=True, text=True
    )
    assert missing.returncode == 3 and "no database at" in missing.stderr
    state.mkdir()
    with sqlite3.connect(state / "easytask.db") as db:
        db.execute("CREATE TABLE job (id INTEGER PRIMARY KEY)")
    before = subprocess.run(
        easytask_cmd("db", "current", "--state-dir", str(state)), capture_output=True, text=True
    )
    assert before.returncode == 1 and "status: out of date" in before.stdout
    done = subprocess.run(
        easytask_cmd("db", "upgrade", "--state-dir", str(state)), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    after = subprocess.run(
        easytask_cmd("db", "current", "--state-dir", str(state)), capture_output=True, text=True
    )
    assert after.returncode == 0 and f"revision: {head_revision()}" in after.stdout
    assert "status: up to date" in after.stdout
    with sqlite3.connect(state / "easytask.db") as db:
        columns = {row[1] for row in db.execute("PRAGMA table_info(job)")}
    assert {"kind", "command", "forks", "created_at"} <= columns


@pytest.mark.postgres
def test_server_creates_the_schema_in_an_empty_postgres(
    postgres: PostgresCluster, start_server: ServerFactory
) -> None:
    """A server given an empty PostgreSQL database creates the schema and runs a job there."""
    url = postgres.new_database(empty=True)
    server = start_server(None, "--db", url)
    engine = make_engine(url)
    try:
        assert schema_state(engine).up_to_date
    finally:
        engine.dispose()
    assert server.get("/api/runs") is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_database_one_revision_behind_is_refused_then_upgraded(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path, start_server: ServerFactory
) -> None:
    """At revision 0001 (no job.server) the server names `db upgrade`; after it, jobs run."""
    url = _empty_url(backend, request, tmp_path)
    engine = make_engine(url)
    upgrade(engine, "0001")
    engine.dispose()
    refused = _server(url, tmp_path / "refused")
    assert refused.returncode == 3
    assert f"(revision 0001, this release needs {head_revision()})" in refused.stderr
    assert refused.stderr.strip().endswith(f"easytask db upgrade --db '{url}'")
    current = subprocess.run(
        easytask_cmd("db", "current", "--db", url), capture_output=True, text=True, timeout=120
    )
    assert current.returncode == 1 and "status: out of date" in current.stdout
    done = subprocess.run(
        easytask_cmd("db", "upgrade", "--db", url), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "from revision 0001 to" in done.stdout
    server = start_server(None, "--db", url)
    assert server.get("/api/runs")["runs"] == []
    rows = db_execute(url, "SELECT server FROM job")
    assert rows == []


def test_revision_0005_reindexes_the_lines_already_stored(tmp_path: Path) -> None:
    """Lines stored before 0005 are found through the rebuilt index, and new lines are indexed."""
    from easytask.store.models import Job, Run

    url = sqlite_url(tmp_path / "easytask.db")
    engine = make_engine(url)
    upgrade(engine, "0004")
    engine.dispose()
    store = Store(url)
    try:
        _, (run,) = store.create_job(Job(command="x"), [Run(host="h", command="x")])
        assert run.id is not None
        store.write_lines(
            [(run.id, i, 0.0, "stdout", "INFO", f"old line{i}") for i in range(1, 1201)]
        )
        store.create_schema()
        assert store.schema_state().current == head_revision()
        store.write_lines(
            [(run.id, i, 0.0, "stdout", "INFO", f"new line{i}") for i in range(1201, 1301)]
        )
    finally:
        store.close()
    (definition,) = db_execute(url, "SELECT sql FROM sqlite_master WHERE name = 'log_fts'")[0]
    assert "columnsize=0" in definition
    db_execute(url, "INSERT INTO log_fts(log_fts) VALUES ('integrity-check')")

    def matched(query: str) -> list[int]:
        rows = db_execute(
            url,
            "SELECT l.seq FROM log_fts JOIN log_line AS l ON l.id = log_fts.rowid "
            "WHERE log_fts MATCH :q ORDER BY l.seq",
            {"q": query},
        )
        return [seq for (seq,) in rows]

    assert matched("line7") == [7]
    assert matched("line1250") == [1250]
    assert matched("old") == list(range(1, 1201))
    assert matched("new") == list(range(1201, 1301))
