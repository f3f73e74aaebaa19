"""`easytask inventory`: show an inventory as `ansible-inventory` does, or the hosts a pattern selects."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from easytask.cli.common import VAULT_SETTINGS, add_vault_options
from easytask.config import Settings
from easytask.errors import NoHostsMatched, UsageError

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the `inventory` subcommand on an argparse subparsers object."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inventory",
        help="show the inventory (like ansible-inventory) or the hosts a pattern selects",
        description="Read the inventory locally (no server needed) and show it.",
    )
    p.add_argument(
        "-i",
        "--inventory",
        action="append",
        metavar="PATH",
        help="inventory file, directory, script or 'host1,host2,' list (repeatable; default "
        "from settings)",
    )
    action = p.add_mutually_exclusive_group()
    action.add_argument(
        "--list", action="store_true", help="all groups and host vars, as ansible-inventory --list"
    )
    action.add_argument(
        "--graph",
        nargs="?",
        const="all",
        metavar="GROUP",
        help="the group tree from GROUP (default all), as ansible-inventory --graph",
    )
    action.add_argument("--host", metavar="NAME", help="one host's merged variables as JSON")
    action.add_argument("--hosts", metavar="PATTERN", help="the hosts a pattern selects, in order")
    p.add_argument("--vars", action="store_true", help="with --graph: show variables too")
    p.add_argument("-y", "--yaml", action="store_true", help="with --list: YAML instead of JSON")
    p.add_argument(
        "--export",
        action="store_true",
        help="with --list: group variables on their groups, not merged into each host's",
    )
    p.add_argument(
        "--output", metavar="FILE", help="with --list: write to FILE instead of standard output"
    )
    p.add_argument(
        "--format",
        choices=("json", "text"),
        help="output format (--hosts: text or json; --list/--host: json; --graph: text)",
    )
    add_vault_options(p)
    p.set_defaults(func=run, settings_from=VAULT_SETTINGS)
    return p


def run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Load the inventory and print what was asked; errors are raised, not printed."""
    if not (args.list or args.graph or args.host or args.hosts):
        raise UsageError("inventory: choose one of --list, --graph, --host NAME or --hosts PATTERN")
    if args.vars and not args.graph:
        raise UsageError("inventory: --vars only goes with --graph")
    for flag, given in (
        ("--yaml", args.yaml),
        ("--export", args.export),
        ("--output", args.output),
    ):
        if given and not args.list:
            raise UsageError(f"inventory: {flag} only goes with --list")
    from easytask.config import inventory_sources
    from easytask.inventory import dumps_json, dumps_yaml, load_inventory  # needs YAML
    from easytask.transport.invscript import script_runner
    from easytask.vaultpass import load_vault

    vault = load_vault(settings.vault_password_file, settings.vault_id)
    inventory = load_inventory(
        args.inventory or inventory_sources(settings.inventory),
        scripts=script_runner(settings.inventory_timeout),
        vault=vault,
    )
    for warning in inventory.warnings:
        sys.stderr.write(f"easytask: warning: {warning}\n")
    if args.hosts:
        hosts = inventory.select(args.hosts)
        if args.format == "json":
            out.write(json.dumps(hosts, indent=4) + "\n")
        else:
            out.write("".join(f"{host}\n" for host in hosts))
    elif args.graph:
        _only(args.format, "text", "--graph")
        out.write(inventory.graph(args.graph, with_vars=args.vars) + "\n")
    elif args.host:
        _only(args.format, "json", "--host")
        matched = inventory.select(args.host)
        if len(matched) != 1:
            raise NoHostsMatched(
                f"--host needs exactly one host; {args.host!r} matches {len(matched)}"
            )
        out.write(dumps_json(inventory.host_vars(matched[0])) + "\n")
    else:
        _only(args.format, "json", "--list")
        if args.yaml:
            text = dumps_yaml(inventory.to_yaml_tree(export=args.export))
        else:
            text = dumps_json(inventory.to_list_json(export=args.export))
        if args.output:  # as ansible-inventory: the text as it is, no newline added
            try:
                with open(args.output, "w", encoding="utf-8") as fh:
                    fh.write(text)
            except OSError as exc:
                raise UsageError(f"inventory: cannot write {args.output}: {exc.strerror}") from None
        else:
            out.write(text.rstrip("\n") + "\n")
    return 0


def _only(chosen: str | None, allowed: str, action: str) -> None:
    if chosen not in (None, allowed):
        raise UsageError(f"inventory: {action} prints {allowed} only")
