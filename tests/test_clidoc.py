"""docs/cli.md is the parser's own help."""

from __future__ import annotations

import pytest

from easytask.cli.doc import render
from easytask.cli.main import build_parser, command_of
from easytask.errors import UsageError
from tests.support import REPO


def test_cli_reference_is_current() -> None:
    """The committed CLI reference equals what the parser prints (regenerate with easytask.cli.doc)."""
    assert (REPO / "docs" / "cli.md").read_text() == render(), (
        "docs/cli.md is stale: run `.venv/bin/python -m easytask.cli.doc > docs/cli.md`"
    )


ARGVS = [
    ("run", ["run", "web1", "-a", "true", "--timeout", "5m"]),
    ("run", ["--url", "http://127.0.0.1:1", "--token", "t", "run", "web:&prod", "-a", "uptime"]),
    ("agents", ["-v", "agents", "token", "--uses", "3"]),
    ("users", ["users", "set", "bob", "--role", "operator"]),
    ("export", ["export", "--since", "1d", "--out", "runs.jsonl"]),
    ("db", ["db", "current"]),
    ("inventory", ["inventory", "--list"]),
]


@pytest.mark.parametrize(("command", "argv"), ARGVS, ids=lambda a: " ".join(a)[:40])
def test_a_commands_parser_alone_parses_as_the_whole_one(command: str, argv: list[str]) -> None:
    """`easytask CMD` builds only CMD's parser: the same namespace as the whole command line."""
    assert command_of(argv) == command
    whole = build_parser().parse_args(argv)
    alone = build_parser(command).parse_args(argv)
    assert vars(alone) == vars(whole)


def test_an_unknown_or_missing_command_gets_the_whole_parser() -> None:
    """The usage error lists every command, as without the shortcut."""
    assert command_of(["--url", "http://x", "-v"]) is None
    for only in ("bogus", None):
        parser = build_parser(only)
        with pytest.raises(UsageError, match="invalid choice: 'bogus'.*'server'.*'db'"):
            parser.parse_args(["bogus"])
