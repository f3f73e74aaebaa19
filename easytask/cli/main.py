"""`easytask`: argument parsing, errors to exit codes; the work happens elsewhere."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from easytask import __version__
from easytask.cli.common import EXIT_BUG, EXIT_OK, EXIT_START, Parser, escape_controls
from easytask.cli.credentials import add_parsers as add_credential_parsers
from easytask.cli.daemons import add_demo_parser
from easytask.cli.daemons import add_parsers as add_daemon_parsers
from easytask.cli.db import add_parsers as add_db_parsers
from easytask.cli.export import add_parsers as add_export_parsers
from easytask.cli.grouped import add_parsers as add_group_parsers
from easytask.cli.inventory import add_parser as add_inventory_parser
from easytask.cli.jobs import add_parsers as add_job_parsers
from easytask.cli.manage import add_parsers as add_manage_parsers
from easytask.cli.play import add_parsers as add_play_parsers
from easytask.cli.security import add_parsers as add_security_parsers
from easytask.cli.templates import add_parsers as add_template_parsers
from easytask.config import load_settings
from easytask.errors import EasyTaskError, UsageError
from easytask.proclog import setup_logging


class _Skipped:
    """Stands in for the parser of a command that is not being run (see `build_parser`)."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


class _OneCommand:
    """The top-level subcommands, of which only `name` is built."""

    def __init__(self, sub: Any, name: str) -> None:
        self.sub = sub
        self.name = name
        self.found = False

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if name != self.name:
            return _Skipped()
        self.found = True
        return self.sub.add_parser(name, **kwargs)


DESCRIPTION = "Run commands on many hosts; keep an exact record."

# The modules of the `server` extra's distributions (pyproject.toml) that an agent's install,
# `pip install easytask` alone, does not have (cryptography comes with asyncssh); a command that
# needs one of them says how to add them (tests/test_light_agent.py holds this list to the extra).
SERVER_MODULES = frozenset(
    {
        "sqlmodel",
        "sqlalchemy",
        "pydantic",
        "starlette",
        "uvicorn",
        "jinja2",
        "yaml",
        "httpx",
        "argon2",
        "itsdangerous",
        "alembic",
        "psycopg",
    }
)


def server_extra_command() -> str:
    """The exact command that adds the `server` extra to this installation."""
    import shlex

    return f"{shlex.quote(sys.executable)} -m pip install 'easytask[server]=={__version__}'"


def missing_server_module(exc: BaseException) -> str | None:
    """The server-side module whose absence `exc` reports, if that is what it is."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        top = exc.name.partition(".")[0]
        if top in SERVER_MODULES:
            return top
    return None


GLOBAL_WITH_VALUE = ("--url", "--token")  # global options followed by a value


def command_of(argv: Sequence[str]) -> str | None:
    """The subcommand an argument list names (the first word that is not a global option)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in GLOBAL_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def hoist_globals(argv: list[str]) -> list[str]:
    """`--url`/`--token` after the subcommand (`easytask run all -a x --url U`) are moved before
    it, where the parser takes them: no command has options of those names."""
    command = command_of(argv)
    if command is None:
        return argv
    at = argv.index(command)
    moved: list[str] = []
    rest: list[str] = []
    i = at + 1
    while i < len(argv):
        arg = argv[i]
        if arg in GLOBAL_WITH_VALUE and i + 1 < len(argv):
            moved += argv[i : i + 2]
            i += 2
            continue
        if "=" in arg and arg.split("=", 1)[0] in GLOBAL_WITH_VALUE:
            moved.append(arg)
        else:
            rest.append(arg)
        i += 1
    return [*argv[:at], *moved, command, *rest]


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, the global options and that command alone when it
    exists (building every command's parser takes longer than most commands run)."""
    if only is not None:
        p = Parser(prog="easytask", description=DESCRIPTION)
        if _add_commands(p, only):
            return p
    p = Parser(prog="easytask", description=DESCRIPTION)
    _add_commands(p, None)
    return p


def _add_commands(p: argparse.ArgumentParser, only: str | None) -> bool:
    """Add the global options and the commands (only `only` if given); False if it was absent."""
    p.add_argument("--version", action="version", version=f"easytask {__version__}")
    p.add_argument("--url", help="server URL (EASYTASK_URL)")
    p.add_argument("--token", help="API token (EASYTASK_TOKEN)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    top = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    top.required = True
    one = _OneCommand(top, only) if only is not None else None
    sub: Any = one if one is not None else top

    add_daemon_parsers(sub)
    add_job_parsers(sub)
    add_play_parsers(sub)
    add_group_parsers(sub)
    add_manage_parsers(sub)
    add_demo_parser(sub)
    add_inventory_parser(sub)
    add_security_parsers(sub)
    add_credential_parsers(sub)
    add_template_parsers(sub)
    add_export_parsers(sub)
    add_db_parsers(sub)
    return one is None or one.found


# -- entry point -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None, out: TextIO | None = None) -> int:
    """Parse, run, and map errors to exit codes (0 ok, 1 hosts failed, 2 usage, 3 start, 70 bug)."""
    out = out or sys.stdout
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        rest: list[str] = []
        if "--" in argv:  # everything after -- belongs to the script (`run --script F -- ARGS`)
            cut = argv.index("--")
            argv, rest = argv[:cut], argv[cut + 1 :]
        argv = hoist_globals(argv)
        args = build_parser(command_of(argv)).parse_args(argv)
        if rest:
            if getattr(args, "command", None) != "run":
                raise UsageError(f"unexpected arguments after --: {' '.join(rest)}")
            args.script_args = rest
        setup_logging("text", args.verbose)
        # the command's options that are settings too (see `settings_from`) beat the rest
        names = ("url", "token", *getattr(args, "settings_from", ()))
        settings = load_settings({name: getattr(args, name) for name in names})
        if settings.log_format != "text":
            setup_logging(settings.log_format, args.verbose)
        return int(args.func(args, settings, out))
    except EasyTaskError as exc:
        # a server's message may quote what hosts sent
        sys.stderr.write(f"easytask: {escape_controls(exc.render(), newlines=True)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except SystemExit as exc:  # argparse --help / --version
        return int(exc.code or 0)
    except Exception as exc:
        module = missing_server_module(exc)
        if module is not None:
            command = command_of(argv or []) or "this command"
            sys.stderr.write(
                f"easytask: `easytask {command}` needs the `server` extra, which this "
                f"installation (an agent's) does not have (no module {module!r}); add it "
                f"with:\n    {server_extra_command()}\n"
            )
            return EXIT_START
        import tempfile  # only here: every command would pay for these imports
        import traceback

        fd, path = tempfile.mkstemp(prefix="easytask-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        sys.stderr.write(f"easytask: unexpected error: {exc!r} (traceback in {path})\n")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
