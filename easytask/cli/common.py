"""What the commands share: exit codes, the argument parser class and value types, the API
client, JSON and table output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any, TextIO

from easytask.config import Settings
from easytask.durations import parse_duration, parse_size
from easytask.errors import UsageError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_START, EXIT_BUG = 0, 1, 2, 3, 70
FINAL = {"success", "failed", "terminated", "unreachable", "skipped"}


class Parser(argparse.ArgumentParser):
    """The argument parser of every command: usage errors raise, and its subcommands are known
    (`subcommands`, for the generated reference)."""

    subcommands: dict[str, argparse.ArgumentParser] = {}

    def add_subparsers(self, **kwargs: Any) -> Any:
        action = super().add_subparsers(**kwargs)
        self.subcommands = action.choices
        return action

    def error(self, message: str) -> Any:  # usage errors exit 2 through our own path
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def api_client(settings: Settings) -> Any:
    from easytask.cli.client import Client

    return Client(settings.url, settings.token)


def print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2) + "\n")


def print_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO) -> None:
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
