"""`easytask play`: run a playbook on the server, --check it here, or list its tasks and hosts."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, TextIO

from easytask.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    VAULT_SETTINGS,
    add_vault_options,
    api_client,
    escape_controls,
    play_vault,
)
from easytask.cli.jobs import RAW_HELP, post_and_follow, server_hosts
from easytask.cli.recap import play_ok, play_recap
from easytask.config import Settings
from easytask.errors import UsageError


def add_parsers(sub: Any) -> None:
    """Register `play`."""
    pl = sub.add_parser("play", help="run a playbook (or --check it without a server)")
    pl.add_argument("playbook", help="playbook file, e.g. playbooks/health.yml")
    pl.add_argument("-l", "--limit", help="further limit the hosts with a pattern")
    pl.add_argument(
        "-t",
        "--tags",
        action="append",
        default=[],
        metavar="TAGS",
        help="only the tasks with one of these tags (a,b; repeatable; always, never, all, "
        "tagged, untagged as in Ansible)",
    )
    pl.add_argument(
        "--skip-tags",
        action="append",
        default=[],
        metavar="TAGS",
        help="leave out the tasks with one of these tags (a,b; repeatable)",
    )
    pl.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="VARS",
        help="key=value, @file.yml or a JSON/YAML mapping (repeatable)",
    )
    pl.add_argument(
        "--check",
        action="store_true",
        help="validate, render and print the plan; run nothing (no server needed)",
    )
    pl.add_argument(
        "--list-tasks",
        action="store_true",
        help="print the tasks in the order they run (after --tags/--skip-tags); run nothing",
    )
    pl.add_argument(
        "--list-hosts",
        action="store_true",
        help="print the play's hosts (after --limit): from the server's inventory, or from -i; "
        "run nothing",
    )
    pl.add_argument(
        "-i",
        "--inventory",
        action="append",
        metavar="PATH",
        help="inventory for --check and --list-hosts, repeatable (default from settings for "
        "--check); a run uses the server's inventory (`easytask server -i`)",
    )
    pl.add_argument(
        "-b",
        "--become",
        action="store_true",
        help="run the tasks as another user (--become-user, default root), as ansible-playbook "
        "-b; the play's and tasks' become keys go over it",
    )
    pl.add_argument("--become-user", metavar="USER", help="the user to become (implies --become)")
    pl.add_argument("--format", choices=("text", "json"), default="text")
    pl.add_argument("--raw", action="store_true", help=RAW_HELP)
    add_vault_options(pl)
    pl.set_defaults(func=cmd_play, settings_from=VAULT_SETTINGS)


def _play_listing(
    args: argparse.Namespace,
    settings: Settings,
    playbook: Any,
    tags: tuple[str, ...],
    skip_tags: tuple[str, ...],
    out: TextIO,
    vault: Any = None,
) -> int:
    """`play --list-tasks` / `--list-hosts`, as ansible-playbook prints them; nothing runs."""
    from easytask.plan import tag_selected

    if args.list_hosts:
        if args.inventory:
            from easytask.inventory import load_inventory
            from easytask.transport.invscript import script_runner

            inventory = load_inventory(
                args.inventory, scripts=script_runner(settings.inventory_timeout), vault=vault
            )
            hosts = inventory.select(playbook.hosts)
            if args.limit:
                allowed = set(inventory.select(args.limit))
                hosts = [h for h in hosts if h in allowed]
        else:
            data = server_hosts(api_client(settings), playbook.hosts, args.limit)
            hosts = [h["name"] for h in data["hosts"]]
    out.write(f"\nplaybook: {args.playbook}\n\n  play #1 ({playbook.hosts}): {playbook.name}\n")
    if args.list_hosts:
        out.write(f"    pattern: {playbook.hosts}\n    hosts ({len(hosts)}):\n")
        out.writelines(f"      {escape_controls(h)}\n" for h in hosts)
    if args.list_tasks:
        out.write("    tasks:\n")
        for task in playbook.tasks:
            if not tag_selected(task.tags, tags, skip_tags):
                continue
            order = (
                f"after {task.needs[0]}"
                if task.needs_implied
                else ("needs " + ", ".join(task.needs) if task.needs else "at once")
            )
            loop = f"\t{_loop_text(task.loop)}" if task.loop is not None else ""
            out.write(f"      {task.name}\tTAGS: [{', '.join(task.tags)}]\t{order}{loop}\n")
    return EXIT_OK


def _loop_text(loop: Any) -> str:
    """How --list-tasks shows a task's loop: its items as written (each host renders them)."""
    key = "with_items" if loop.flatten else "loop"
    if loop.template is not None:
        over = loop.template.strip()
    else:
        over = ", ".join(str(i) for i in loop.items or ())
        over = f"[{over if len(over) <= 60 else over[:57] + '...'}]"
    label = f" label {loop.label}" if loop.label else ""
    known = " (over results: its items are known when it runs)" if loop.at_run else ""
    return (
        escape_controls(
            f"{key} {over}" + (f" as {loop.loop_var}" if loop.loop_var != "item" else "") + label
        )
        + known
    )


def _become(args: argparse.Namespace) -> Any:
    """`-b`/`--become-user` as the lowest become level (a user alone means become)."""
    from easytask.plan.become import BecomeRequest, check_user

    if not (args.become or args.become_user):
        return BecomeRequest()
    user = check_user(args.become_user, "--become-user") if args.become_user else None
    return BecomeRequest(become=True, user=user)


def cmd_play(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import base64

    from easytask.config import inventory_sources
    from easytask.inventory import load_inventory
    from easytask.plan import (
        check_playbook,
        dumps_check,
        format_check,
        parse_extra_vars,
        plan_playbook,
        tag_names,
    )
    from easytask.playbook import load_playbook
    from easytask.transport.invscript import script_runner

    if args.inventory and not (args.check or args.list_hosts):
        raise UsageError(
            "play: -i/--inventory is only read with --check or --list-hosts; a playbook runs on "
            "the server's inventory (set it with `easytask server -i`)"
        )
    vault = play_vault(args, settings)
    started = time.monotonic()
    playbook = load_playbook(args.playbook, vault)
    extra = parse_extra_vars(args.extra_vars)
    tags = tag_names(",".join(args.tags), "--tags")
    skip_tags = tag_names(",".join(args.skip_tags), "--skip-tags")
    become = _become(args)
    if args.list_tasks or args.list_hosts:
        return _play_listing(args, settings, playbook, tags, skip_tags, out, vault)
    if args.check:
        inventory = load_inventory(
            args.inventory or inventory_sources(settings.inventory),
            scripts=script_runner(settings.inventory_timeout),
            vault=vault,
        )
        # a secret nothing here sets comes from the server's credential store: a placeholder
        stored = {
            n: f"<credential {n}>"
            for n in playbook.secrets
            if n not in playbook.vars
            and n not in extra
            and not any(n in inventory.host_vars(h) for h in inventory.hosts)
        }
        plan = plan_playbook(
            playbook,
            inventory,
            extra_vars={**stored, **extra},
            limit=args.limit,
            tags=tags,
            skip_tags=skip_tags,
            become=become,
        )
        checked = check_playbook(plan)
        out.write(dumps_check(checked) if args.format == "json" else format_check(plan, checked))
        return EXIT_USAGE if any(c.error for c in checked) else EXIT_OK
    base = Path(playbook.base_dir)
    files = {}
    local = [t.action.path for t in playbook.tasks if t.action.path] + list(playbook.vars_files)
    for path in local:
        rel = Path(path).resolve().relative_to(base.resolve())
        files[str(rel)] = base64.b64encode(Path(path).read_bytes()).decode()
    client = api_client(settings)
    body = {
        "name": Path(args.playbook).name,
        "text": playbook.text,
        "files": files,
        "limit": args.limit,
        "tags": list(tags),
        "skip_tags": list(skip_tags),
        "extra_vars": extra,
        **({"become": True} if become.become else {}),
        **({"become_user": become.user} if become.user else {}),
    }
    data = post_and_follow(client, "/api/playbooks/run", body, args.format, out, args.raw)
    if data is None:
        return 130
    if data["job"]["state"] == "awaiting approval":
        return EXIT_OK
    if args.format != "json":
        play_recap(data, time.monotonic() - started, out)
    return EXIT_OK if play_ok(data["runs"]) else EXIT_FAILED
