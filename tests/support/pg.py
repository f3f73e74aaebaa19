"""A real PostgreSQL for tests: initdb and pg_ctl into a temp dir, on a free loopback port."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from tests.support.procs import free_port

# initdb refuses to run as root; the cluster then belongs to this system user.
PG_USER = "postgres"
TEMPLATE = "easytask_template"


def pg_bin(name: str) -> str:
    """The path of a PostgreSQL server program (PATH first, then Debian's versioned dirs)."""
    found = shutil.which(name)
    if found:
        return found
    for version_dir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version_dir / name).exists():
            return str(version_dir / name)
    raise FileNotFoundError(f"{name} not found: `make sysdeps` installs the postgresql package")


class PostgresCluster:
    """One throwaway cluster: trust auth on 127.0.0.1, durability off for speed unless `durable`
    (then PostgreSQL's own defaults for fsync, commits and buffers, as a benchmark wants)."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        self.root = Path(tempfile.mkdtemp(prefix="easytask-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.port = free_port()
        self._owner: dict[str, Any] = {}
        if os.getuid() == 0:
            try:
                entry = pwd.getpwnam(PG_USER)
            except KeyError:
                raise RuntimeError(
                    f"initdb refuses root and there is no {PG_USER!r} user: run `make sysdeps`"
                ) from None
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            self._owner = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        self._count = 0

    def _run(self, *args: str) -> None:
        done = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            cwd=self.root,
            start_new_session=True,
            check=False,
            timeout=120,
            **self._owner,
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{log}")

    def start(self) -> None:
        """initdb, then start the server and wait until it accepts connections."""
        self._run(
            pg_bin("initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        speed = (
            ""
            if self.durable
            else "-c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c shared_buffers=32MB "
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} {speed}"
            "-c max_connections=300 "
            # a zone far from UTC, so a time read back in the server's zone would show
            "-c timezone=Pacific/Auckland"
        )
        self._options = options
        self.resume()

    def halt(self) -> None:
        """Stop the server (`pg_ctl stop -m fast`: clients are disconnected), keeping its files."""
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def resume(self) -> None:
        """Start the server on its files and port; return once it accepts connections."""
        self._run(
            pg_bin("pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-o",
            self._options,
            "start",
        )

    def stop(self) -> None:
        """Stop the server at once and remove its files."""
        if (self.data / "postmaster.pid").exists():
            self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The URL a server is given with --db."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE DATABASE needs that)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def make_template(self) -> None:
        """A database with the current schema that every test database is copied from."""
        from easytask.store.db import make_engine
        from easytask.store.schema import upgrade

        self.execute(f"CREATE DATABASE {TEMPLATE}")
        engine = make_engine(self.url(TEMPLATE))
        try:
            upgrade(engine)
        finally:
            engine.dispose()

    def new_database(self, empty: bool = False) -> str:
        """A fresh database (schema already in place unless `empty`); returns its URL."""
        self._count += 1
        name = f"t{os.getpid()}_{self._count}"
        self.execute(f"CREATE DATABASE {name} TEMPLATE {'template0' if empty else TEMPLATE}")
        return self.url(name)
