"""Schema revisions: where a database stands against this release, and bringing it up to date."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine, make_url

import easytask.migrations
from easytask.errors import StartError


def alembic_config(url: str = "") -> Config:
    """An Alembic configuration for EasyTask's revisions (no alembic.ini needed)."""
    # Alembic reports every step at INFO; EasyTask says what happened in one line itself.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(easytask.migrations.__file__).parent))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The revision this release needs."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands: its revision (None when unversioned), and whether it is empty."""

    current: str | None
    head: str
    empty: bool
    known: bool

    @property
    def up_to_date(self) -> bool:
        """The database is at the revision this release needs."""
        return self.current == self.head


def schema_state(engine: Engine) -> SchemaState:
    """Read the database's revision and compare it with this release's."""
    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    assert head is not None
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        current = MigrationContext.configure(conn).get_current_revision()
    known = current is None or current in {rev.revision for rev in script.walk_revisions()}
    return SchemaState(current=current, head=head, empty=not tables, known=known)


# Held while revisions run, so servers starting together on one PostgreSQL upgrade it once.
_UPGRADE_LOCK = 0x6561_7379  # "easy"


def upgrade(engine: Engine, target: str = "head") -> None:
    """Run the revisions up to `target` in one transaction (where the database allows)."""
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, target)


class SchemaOutOfDate(StartError):
    """The database schema is not the one this release of EasyTask needs."""


def upgrade_command(url: str) -> str:
    """The command that brings this database up to date, as a user types it."""
    shown = make_url(url).render_as_string(hide_password=True)
    return f"easytask db upgrade --db '{shown}'"


def prepare(engine: Engine, url: str) -> str:
    """What a starting server does: create the schema in an empty database, accept one that is
    up to date, refuse any other with the command that fixes it. Returns "created" or "current".
    """
    from sqlalchemy.exc import OperationalError

    try:
        state = schema_state(engine)
        if state.empty:
            upgrade(engine)
            return "created"
    except OperationalError as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        raise StartError(f"cannot use the database {shown}: {exc.orig}") from exc
    if state.up_to_date:
        return "current"
    if not state.known:
        raise SchemaOutOfDate(
            f"the database is at schema revision {state.current}, which this release of "
            f"EasyTask does not know (it needs {state.head}): a newer release made it; "
            "run that release or restore a backup"
        )
    at = state.current or "none (made by a release before schema revisions)"
    raise SchemaOutOfDate(
        f"the database schema is out of date (revision {at}, this release needs {state.head}); "
        f"stop every server using it, back it up, then run: {upgrade_command(url)}"
    )
