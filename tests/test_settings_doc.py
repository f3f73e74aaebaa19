"""The settings tables of docs/operations.md and the settings' help texts agree with the code:
every setting listed with its true config key, variable, flags and default; nothing listed that
does not exist."""

from __future__ import annotations

import argparse
import inspect
import re
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import pytest

from easytask.cli import daemons
from easytask.cli.main import build_parser
from easytask.config import CONFIG_ENV, Settings, env_name, setting_names
from easytask.durations import parse_duration, parse_size
from tests.support import REPO

OPERATIONS = REPO / "docs" / "operations.md"
GLOBAL = "(any command)"  # the flag column's mark for the global options
ENV_RE = re.compile(r"EASYTASK_[A-Z][A-Z_]*[A-Z]")


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _tables(section: str) -> list[list[list[str]]]:
    """Each Markdown table of a section as rows of cells, the header row first."""
    tables: list[list[list[str]]] = []
    previous = ""
    for line in section.splitlines():
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            if not re.fullmatch(r"\|[-| ]+\|", line):
                tables[-1].append([c.strip() for c in line.strip().strip("|").split(" | ")])
        previous = line
    return tables


def _code(cell: str) -> list[str]:
    """The `code` spans of a cell."""
    return re.findall(r"`([^`]+)`", cell)


SETTINGS_SECTION = _section(OPERATIONS.read_text(), "Settings")
SETTINGS_TABLE, AGENT_TABLE = _tables(SETTINGS_SECTION)


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command's parser with its words (`("db", "upgrade")`), the top one as `()`."""
    yield path, parser
    for name, sub in getattr(parser, "subcommands", {}).items():
        yield from _commands(sub, (*path, name))


PARSERS = dict(_commands(build_parser()))
# the variables `easytask agent` reads (`env.get("EASYTASK_AGENT_...")`)
AGENT_VARIABLES = set(
    re.findall(r'env\.get\("(EASYTASK_\w+)"', inspect.getsource(daemons.cmd_agent))
)


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in getattr(parser, "options", []) if a.dest != "help"]


def settings_of(path: tuple[str, ...], parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The settings a command's options set: the global `--url` and `--token` (see `main`), and
    each command's `settings_from`."""
    return ("url", "token") if not path else parser.get_default("settings_from") or ()


def true_flags() -> set[tuple[str, str, tuple[str, ...]]]:
    """(setting, first command word or "" for a global option, the option's strings) of every
    option that is a setting: resolved through `load_settings`, flag > environment > file >
    default."""
    found = set()
    for path, parser in PARSERS.items():
        for action in _options(parser):
            if action.dest in settings_of(path, parser):
                found.add((action.dest, path[0] if path else "", tuple(action.option_strings)))
    return found


def listed_flags(cell: str) -> list[tuple[str, str, list[str]]]:
    """The flag column: `--url` (any command), `server/db --state-dir`, `play --check -i`: (command
    word or "" for global, the flag, options given with it) for each command it names."""
    out = []
    for span in _code(cell):
        words = span.split()
        commands = [""] if words[0].startswith("-") else words.pop(0).split("/")
        for command in commands:
            out.append((command, words[-1], words[:-1]))
    return out


def _parsers_of(command: str) -> list[argparse.ArgumentParser]:
    """A command's parser and those of its subcommands (`db` -> db, db upgrade, db current)."""
    if not command:
        return [PARSERS[()]]
    return [p for path, p in PARSERS.items() if path[:1] == (command,)]


def test_every_setting_listed_once_with_its_key_and_variable() -> None:
    """One row per setting of `easytask.config.Settings`, its variable `EASYTASK_<KEY>`."""
    rows = SETTINGS_TABLE[1:]
    assert SETTINGS_TABLE[0] == ["setting (config key)", "environment", "flag", "default"]
    keys = [_code(row[0])[0] for row in rows]
    assert sorted(keys) == sorted(setting_names()), (
        "docs/operations.md#settings lists other settings"
    )
    assert len(keys) == len(set(keys))
    for row in rows:
        assert _code(row[1]) == [env_name(_code(row[0])[0])], row


def test_every_flag_listed_and_every_listed_flag_real() -> None:
    """Each option that is a setting is in its row; each flag in a row is an option of the named
    command(s) that sets that setting (`play --check -i` reads `inventory` as its default)."""
    listed = set()
    for row in SETTINGS_TABLE[1:]:
        name = _code(row[0])[0]
        entries = listed_flags(row[2])
        assert (GLOBAL in row[2]) == any(command == "" for command, _, _ in entries), row
        if not entries:
            assert row[2].startswith("(none"), row
        for command, flag, given_with in entries:
            parsers = _parsers_of(command)
            assert parsers, f"{name}: no command {command!r}"
            options = [a for p in parsers for a in _options(p)]
            assert any(flag in a.option_strings and a.dest == name for a in options), (
                f"{name}: `{command} {flag}` is not an option of that command for this setting"
            )
            for other in given_with:
                assert any(other in a.option_strings for a in options), (name, other)
            listed.add((name, command, flag))
    for name, command, strings in sorted(true_flags()):
        assert any((name, command, o) in listed for o in strings), (
            f"{name}: `{command} {strings[-1]}` is a flag of this setting but not listed"
        )


@pytest.mark.parametrize("name", setting_names())
def test_each_listed_default_is_the_default(name: str) -> None:
    """A default cell starting with `value` holds the default (as its kind is read); any other
    default cell describes a setting that is unset (None) by default."""
    field = next(f for f in fields(Settings) if f.name == name)
    row = next(r for r in SETTINGS_TABLE[1:] if _code(r[0])[0] == name)
    cell, kind = row[3], field.metadata["kind"]
    if not cell.startswith("`"):
        assert field.default is None, f"{name}: the default {field.default!r} is not listed"
        return
    text = _code(cell)[0]
    read = {
        "duration": parse_duration,
        "lifetime": parse_duration,
        "size": parse_size,
        "count": int,
        "path": Path,
        "bool": {"true": True, "false": False}.get,
    }.get(kind, str)
    assert read(text) == field.default, f"{name}: listed `{text}`, is {field.default!r}"
    if kind == "choice":
        assert sorted(_code(cell)) == sorted(field.metadata["choices"]), name


def test_a_settings_help_names_its_variable_and_no_option_names_another() -> None:
    """`(EASYTASK_NAME)` after an option's help (docs/cli.md) marks a setting, and only a setting
    (or an agent variable, which the agent reads itself)."""
    for path, parser in PARSERS.items():
        for action in _options(parser):
            named = set(ENV_RE.findall(action.help or ""))
            if action.dest in settings_of(path, parser):
                assert env_name(action.dest) in named, (path, action.option_strings)
            for variable in named - {env_name(action.dest), CONFIG_ENV}:
                assert path == ("agent",) and variable in AGENT_VARIABLES, (path, variable)


def test_agent_table() -> None:
    """The agent's table: each flag an agent option with that variable in its help and read by
    `easytask agent`; with the options said to be flags only, every option of the agent."""
    agent = PARSERS[("agent",)]
    options = {o: a for a in _options(agent) for o in a.option_strings}
    assert AGENT_TABLE[0] == ["flag", "environment", "default"]
    listed = set()
    for row in AGENT_TABLE[1:]:
        flag = _code(row[0])[0].split()[0]
        variable = _code(row[1])[0].partition("=")[0]
        assert flag in options, f"agent {flag}: no such option"
        assert variable in (options[flag].help or ""), (flag, variable)
        assert variable in AGENT_VARIABLES | {env_name("log_format")}, variable
        listed.add(flag)
    flags_only = SETTINGS_SECTION.split("Its other options", 1)[1].split("are flags only")[0]
    listed |= set(_code(flags_only))
    assert listed == {a.option_strings[-1] for a in _options(agent)}
    assert {_code(row[1])[0].partition("=")[0] for row in AGENT_TABLE[1:]} == AGENT_VARIABLES | {
        env_name("log_format")
    }


def test_no_variable_in_the_docs_that_does_not_exist() -> None:
    """Every EASYTASK_* name in docs/operations.md and docs/cli.md is read by EasyTask."""
    known = {env_name(n) for n in setting_names()} | AGENT_VARIABLES | {CONFIG_ENV}
    for doc in ("operations.md", "cli.md"):
        text = (
            (REPO / "docs" / doc)
            .read_text()
            .replace("(EASYTASK_NAME)", "")
            .replace("EASYTASK_AGENT_*", "")
        )
        unknown = set(ENV_RE.findall(text)) - known
        assert not unknown, f"docs/{doc} names {sorted(unknown)}"
