"""`easytask users`, `easytask tokens` and `easytask login`: accounts and API tokens."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from easytask.cli.common import Parser, api_client, print_table
from easytask.config import CONFIG_ENV, LOCAL_CONFIG, USER_CONFIG, Settings, write_client_config
from easytask.errors import UsageError

__all__ = ["add_parsers"]

ROLES = ("admin", "operator", "viewer", "auditor")


def _read_password(args: argparse.Namespace, prompt: str, confirm: bool = True) -> str:
    """The password from stdin (--password-stdin) or asked twice on the terminal."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for a password: use --password-stdin")
        password = getpass.getpass(prompt)
        if confirm and getpass.getpass("again: ") != password:
            raise UsageError("the passwords differ")
    if not password:
        raise UsageError("empty password")
    return password


def add_parsers(sub: Any) -> None:
    """Register `users`, `tokens` and `login`."""
    us = sub.add_parser(
        "users", help="console and API accounts (admin): add, passwd, disable, list"
    )
    us.add_argument("--format", choices=("text", "json"), default="text")
    ussub = us.add_subparsers(dest="users_command", metavar="ACTION", parser_class=Parser)
    ussub.add_parser("list", help="every user with role, scope and state")
    x = ussub.add_parser("add", help="create a user (password asked, or --password-stdin)")
    x.add_argument("name")
    x.add_argument("--role", choices=ROLES, default="viewer")
    x.add_argument("--scope", default="", help="host pattern the user may run on (default: all)")
    x.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    x = ussub.add_parser(
        "passwd",
        help="set a user's password (yours: current one asked first; any as admin); "
        "ends that user's API tokens and console sessions",
    )
    x.add_argument("name")
    x.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin (your own: the current one, then the new one, "
        "a line each)",
    )
    x = ussub.add_parser("set", help="change a user's role or scope")
    x.add_argument("name")
    x.add_argument("--role", choices=ROLES)
    x.add_argument("--scope", help="host pattern; '' for every host")
    for action in ("disable", "enable"):
        x = ussub.add_parser(action, help=f"{action} a user (sessions and tokens follow at once)")
        x.add_argument("name")
    us.set_defaults(func=cmd_users)

    tk = sub.add_parser("tokens", help="API tokens: create, list, revoke")
    tk.add_argument("--format", choices=("text", "json"), default="text")
    tksub = tk.add_subparsers(dest="tokens_command", metavar="ACTION", parser_class=Parser)
    x = tksub.add_parser("list", help="your tokens (an admin sees all, or --user)")
    x.add_argument("--user")
    x = tksub.add_parser("create", help="a new named token; printed once, stored hashed")
    x.add_argument("name")
    x.add_argument("--ttl", help="lifetime, e.g. 30d (default and most: the server's maximum)")
    x.add_argument("--user", help="owner (admin only; default: you)")
    x = tksub.add_parser("revoke", help="revoke a token by id")
    x.add_argument("id", type=int)
    tk.set_defaults(func=cmd_tokens, user=None)

    lg = sub.add_parser(
        "login", help="sign in with a password; store a new API token in the user config file"
    )
    lg.add_argument("--user", help="user name (asked if missing)")
    lg.add_argument("--token-name", help="name of the new token (default: login HOST)")
    lg.add_argument(
        "--ttl", help="token lifetime, e.g. 30d (default and most: the server's maximum)"
    )
    lg.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    lg.add_argument("--config", help=f"file to write (default: ${CONFIG_ENV} or {USER_CONFIG})")
    lg.set_defaults(func=cmd_login)


def cmd_users(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    action = args.users_command or "list"
    if action == "add":
        password = _read_password(args, f"password for {args.name}: ")
        data = client.post(
            "/api/users",
            {"name": args.name, "role": args.role, "scope": args.scope, "password": password},
        )
        out.write(f"user {data['name']}: created ({data['role']})\n")
        return 0
    if action == "passwd":
        own = client.get("/api/whoami")["name"] == args.name
        change: dict[str, str] = {}
        if own:  # your own needs the current one; an admin resets another's without it
            change["current_password"] = _read_password(args, "current password: ", confirm=False)
        change["password"] = _read_password(args, f"new password for {args.name}: ")
        client.post(f"/api/users/{args.name}", change)
        out.write(f"user {args.name}: password changed; its API tokens and sessions ended\n")
        if own:
            sys.stderr.write("your token ended too: sign in again with `easytask login`\n")
        return 0
    if action in ("disable", "enable"):
        data = client.post(f"/api/users/{args.name}", {"disabled": action == "disable"})
        out.write(f"user {data['name']}: {'disabled' if data['disabled'] else 'enabled'}\n")
        return 0
    if action == "set":
        body: dict[str, Any] = {}
        if args.role is not None:
            body["role"] = args.role
        if args.scope is not None:
            body["scope"] = args.scope
        if not body:
            raise UsageError("users set: give --role and/or --scope")
        data = client.post(f"/api/users/{args.name}", body)
        out.write(f"user {data['name']}: role {data['role']}, scope {data['scope'] or 'all'}\n")
        return 0
    users = client.get("/api/users")["users"]
    if args.format == "json":
        out.write(json.dumps(users, indent=2) + "\n")
        return 0
    rows = [
        (
            u["name"],
            u["role"],
            u["scope"] or "all",
            "disabled" if u["disabled"] else "active",
            (u["created_at"] or "")[:19].replace("T", " "),
        )
        for u in users
    ]
    print_table(rows, ("NAME", "ROLE", "SCOPE", "STATE", "CREATED (UTC)"), out)
    return 0


def cmd_tokens(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    action = args.tokens_command or "list"
    if action == "create":
        data = client.post("/api/tokens", {"name": args.name, "ttl": args.ttl, "user": args.user})
        if args.format == "json":
            out.write(json.dumps(data, indent=2) + "\n")
        else:
            out.write(data["token"] + "\n")
            sys.stderr.write(
                f"token {data['id']} ({data['name']}) for {data['user']}: shown once, "
                "stored hashed\n"
            )
        return 0
    if action == "revoke":
        data = client.post(f"/api/tokens/{args.id}/revoke")
        out.write(f"token {data['id']} ({data['name']}, {data['user']}): revoked\n")
        return 0
    tokens = client.get("/api/tokens", user=args.user)["tokens"]
    if args.format == "json":
        out.write(json.dumps(tokens, indent=2) + "\n")
        return 0

    def when(value: str | None) -> str:
        return (value or "-")[:19].replace("T", " ")

    rows = [
        (
            t["id"],
            t["name"],
            t["user"],
            "revoked" if t["revoked"] else "active",
            when(t["created_at"]),
            when(t["expires_at"]),
            when(t["last_used"]),
        )
        for t in tokens
    ]
    print_table(rows, ("ID", "NAME", "USER", "STATE", "CREATED (UTC)", "EXPIRES", "LAST USED"), out)
    return 0


def _ask(prompt: str, default: str | None) -> str:
    if not sys.stdin.isatty():
        if default:
            return default
        raise UsageError(f"no terminal to ask for {prompt.strip(': ')}: pass it as an option")
    answer = input(f"{prompt}" + (f"[{default}] " if default else "")).strip()
    return answer or (default or "")


def cmd_login(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from easytask.cli.client import login

    url = _ask("server URL: ", settings.url).rstrip("/")
    if not url.startswith(("http://", "https://")) or any(c in url for c in "\"'\\\n\r "):
        raise UsageError(f"not a server URL: {url!r} (http://HOST:PORT or https://...)")
    user = args.user or _ask("user: ", None)
    password = _read_password(args, f"password for {user}: ", confirm=False)
    host = os.uname().nodename
    data = login(
        url,
        {
            "name": user,
            "password": password,
            "token_name": args.token_name or f"login {host}",
            "ttl": args.ttl,
        },
    )
    if args.config:
        path = Path(args.config).expanduser()
    elif os.environ.get(CONFIG_ENV):
        path = Path(os.environ[CONFIG_ENV]).expanduser()
    else:
        path = USER_CONFIG.expanduser()
    write_client_config(path, url, data["token"])
    out.write(
        f"signed in as {data['user']} ({data['role']}); token {data['id']} ({data['name']}) "
        f"saved in {path}\n"
    )
    if path != LOCAL_CONFIG and LOCAL_CONFIG.is_file() and not os.environ.get(CONFIG_ENV):
        sys.stderr.write(f"note: {LOCAL_CONFIG} in this directory takes precedence over {path}\n")
    return 0
