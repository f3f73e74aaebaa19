"""`easytask secrets`: the credential store (admin): set, list, rm, rotate-key.

A value is read from a file or stdin (asked without echo on a terminal), never from the
command line, where every local user could read it in `ps`.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from easytask.cli.common import Parser, api_client, print_table
from easytask.config import Settings
from easytask.errors import UsageError

__all__ = ["add_parsers"]

KINDS = ("value", "ssh-key", "become-password")


def add_parsers(sub: Any) -> None:
    """Register `secrets`."""
    se = sub.add_parser(
        "secrets", help="the credential store (admin): set, list, rm, rotate-key; never shown"
    )
    se.add_argument("--format", choices=("text", "json"), default="text")
    sesub = se.add_subparsers(dest="secrets_command", metavar="ACTION", parser_class=Parser)
    sesub.add_parser("list", help="names, kinds, scopes, who and when; never values")
    x = sesub.add_parser(
        "set", help="create or replace a credential; its value from --file or stdin"
    )
    x.add_argument("name", help="a letter, then letters, digits, _ . or - (64 at most)")
    x.add_argument("--kind", choices=KINDS, default="value", help="what it is (default: value)")
    x.add_argument("--file", help="read the value from this file (default: stdin)")
    x.add_argument(
        "--scope", default="", help="host pattern it may be used on (default: every host)"
    )
    x = sesub.add_parser("rm", help="delete a credential")
    x.add_argument("name")
    sesub.add_parser("rotate-key", help="seal every value again under a new key (one transaction)")
    se.set_defaults(func=cmd_secrets)


def _read_value(args: argparse.Namespace) -> str:
    """The value from --file, stdin, or asked on the terminal (no echo)."""
    if args.file:
        try:
            value = Path(args.file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--file {args.file}: {exc}") from exc
    elif sys.stdin.isatty():
        value = getpass.getpass(f"value of {args.name}: ")
    else:
        value = sys.stdin.read()
    if args.kind != "ssh-key" and value.endswith("\n"):  # the newline `echo` or a file adds
        value = value[:-1].removesuffix("\r")
    if not value.strip():
        raise UsageError(f"secrets set {args.name}: empty value")
    return value


def cmd_secrets(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    action = args.secrets_command or "list"
    if action == "set":
        value = _read_value(args)
        data = client.post(
            "/api/credentials",
            {"name": args.name, "kind": args.kind, "value": value, "scope": args.scope},
        )
        state = "created" if data["created"] else "replaced"
        out.write(f"credential {data['name']}: {state} ({data['kind']})\n")
        return 0
    if action == "rm":
        client.post(f"/api/credentials/{quote(args.name, safe='')}/remove")
        out.write(f"credential {args.name}: removed\n")
        return 0
    if action == "rotate-key":
        data = client.post("/api/credentials/rotate-key")
        out.write(
            f"{data['count']} credential(s) sealed again under key {data['new_key']} "
            f"(was {data['old_key']})\n"
        )
        return 0
    data = client.get("/api/credentials")
    rows = data["credentials"]
    if args.format == "json":
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0

    def when(value: str | None) -> str:
        return (value or "-")[:19].replace("T", " ")

    table = [
        (
            r["name"],
            r["kind"],
            r["scope"] or "all",
            f"{r['created_by']} {when(r['created_at'])}",
            f"{r['updated_by']} {when(r['updated_at'])}",
            f"{r['last_used_by']} {when(r['last_used_at'])}" if r["last_used_at"] else "-",
        )
        for r in rows
    ]
    headers = ("NAME", "KIND", "SCOPE", "CREATED (UTC)", "UPDATED", "LAST USED")
    print_table(table, headers, out)
    return 0
