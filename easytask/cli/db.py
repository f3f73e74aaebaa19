"""`easytask db`: the schema revision of a database, and bringing it up to date."""

from __future__ import annotations

import argparse
import os
from typing import Any, TextIO

from easytask.config import Settings
from easytask.errors import StartError

__all__ = ["add_parsers"]


def add_parsers(subparsers: Any) -> None:
    """Register `db upgrade` and `db current` (they work without a server)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "db",
        help="database schema: show its revision, upgrade it",
        description="Work on the database directly (no server needed). Back it up first.",
    )
    sub = p.add_subparsers(dest="db_command", metavar="ACTION")
    sub.required = True
    for name, text in (
        ("upgrade", "run the schema revisions this release needs (stop the servers first)"),
        ("current", "show the database's schema revision and this release's; exit 1 if behind"),
    ):
        x = sub.add_parser(name, help=text, description=text)
        x.add_argument("--db", help="database URL (EASYTASK_DB; default: SQLite in the state dir)")
        x.add_argument(
            "--state-dir",
            help="the server's state dir, for its default SQLite file (EASYTASK_STATE_DIR)",
        )
        x.set_defaults(func=cmd_db, settings_from=("db", "state_dir"))


def _url(args: argparse.Namespace, settings: Settings, create: bool) -> str:
    from easytask.store.db import sqlite_url

    if settings.db:
        return settings.db
    state_dir = settings.state_dir
    path = state_dir / "easytask.db"
    if not create and not path.exists():
        raise StartError(f"no database at {path} (give --db URL or --state-dir DIR)")
    if create:
        state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(state_dir, 0o700)
    return sqlite_url(path)


def cmd_db(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """`easytask db upgrade|current`."""
    from sqlalchemy.exc import OperationalError

    from easytask.store import schema
    from easytask.store.db import make_engine, safe_url

    url = _url(args, settings, create=args.db_command == "upgrade")
    engine = make_engine(url)
    try:
        before = schema.schema_state(engine)
        if args.db_command == "current":
            status = "up to date" if before.up_to_date else "out of date"
            if not before.known:
                status = "unknown to this release (made by a newer one?)"
            elif before.empty:
                status = "empty (the first server start or `easytask db upgrade` creates it)"
            out.write(
                f"database: {safe_url(url)}\n"
                f"revision: {before.current or 'none'}\n"
                f"this release needs: {before.head}\n"
                f"status: {status}\n"
            )
            return 0 if before.up_to_date else 1
        if not before.known:
            raise StartError(
                f"the database is at revision {before.current}, unknown to this release: "
                "it was made by a newer one"
            )
        if before.up_to_date:
            out.write(f"{safe_url(url)}: already at revision {before.head}\n")
            return 0
        schema.upgrade(engine)
        out.write(
            f"{safe_url(url)}: upgraded from revision {before.current or 'none'} "
            f"to {schema.schema_state(engine).current}\n"
        )
        return 0
    except OperationalError as exc:
        raise StartError(f"cannot use the database {safe_url(url)}: {exc.orig}") from exc
    finally:
        engine.dispose()
