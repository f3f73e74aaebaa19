"""`easytask templates`, `launch`, `approvals`, `approve`, `reject`: job templates and the
two-person rule."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from easytask.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    Parser,
    api_client,
    escape_controls,
    follow_interruptible,
    print_table,
)
from easytask.cli.jobs import RunView
from easytask.config import Settings
from easytask.errors import UsageError

__all__ = ["add_parsers"]

WAIT_POLL = 1.0  # seconds between looks at an approval `launch --follow` waits for


def add_parsers(sub: Any) -> None:
    """Register `templates`, `launch`, `approvals`, `approve` and `reject`."""
    t = sub.add_parser("templates", help="job templates: list, show, create, rm (admin)")
    t.add_argument("--format", choices=("text", "json"), default="text")
    tsub = t.add_subparsers(dest="templates_command", metavar="ACTION", parser_class=Parser)
    tsub.add_parser("list", help="every template, and whether you may launch it")
    x = tsub.add_parser("show", help="one template's definition (YAML, or JSON with --format)")
    x.add_argument("name")
    x = tsub.add_parser("create", help="create a template from a YAML or JSON file (admin)")
    x.add_argument("-f", "--file", required=True, help="the definition (see docs/concepts.md)")
    x.add_argument("--replace", action="store_true", help="replace the template of that name")
    x = tsub.add_parser("rm", help="delete a template (admin)")
    x.add_argument("name")
    t.set_defaults(func=cmd_templates)

    la = sub.add_parser("launch", help="launch a job template with parameters")
    la.add_argument("template", help="the template's name")
    la.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a parameter's value, repeatable",
    )
    la.add_argument("-l", "--limit", help="further limit the template's hosts to this pattern")
    la.add_argument(
        "--follow",
        action="store_true",
        help="show the output until the job ends (first waiting for its approval, if it needs one)",
    )
    la.add_argument("--format", choices=("text", "json"), default="text")
    la.set_defaults(func=cmd_launch)

    ap = sub.add_parser(
        "approvals",
        help="launches awaiting approval; `approvals rules ...`: the approval rules (admin)",
    )
    ap.add_argument(
        "action",
        nargs="?",
        choices=("list", "rules"),
        default="list",
        help="list: approval requests; rules: the host patterns whose submissions wait",
    )
    ap.add_argument(
        "rule_action",
        nargs="?",
        choices=("list", "add", "remove", "pause", "resume"),
        help="with rules: list them, add PATTERN, remove/pause/resume ID (admin)",
    )
    ap.add_argument("target", nargs="?", help="with rules: the host pattern (add) or rule id")
    ap.add_argument("--note", default="", help="with rules add: why the hosts need approval")
    ap.add_argument("--all", action="store_true", help="decided ones too")
    ap.add_argument("--format", choices=("text", "json"), default="text")
    ap.set_defaults(func=cmd_approvals)
    for verb, helptext in (
        ("approve", "approve a launch awaiting approval (not your own): it starts"),
        ("reject", "reject a launch awaiting approval, saying why"),
    ):
        x = sub.add_parser(verb, help=helptext)
        x.add_argument("job", type=int, help="the job awaiting approval")
        x.add_argument("-m", "--message", required=verb == "reject", default="", help="the comment")
        x.set_defaults(func=cmd_decide, verb=verb)


def _name(name: str) -> str:
    return quote(name, safe="")


def cmd_templates(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    action = args.templates_command or "list"
    import yaml  # only here: the server extra's, which an agent's install lacks

    if action == "create":
        try:
            data = yaml.safe_load(Path(args.file).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise UsageError(f"--file {args.file}: {exc}") from exc
        if not isinstance(data, dict):
            raise UsageError(f"--file {args.file}: a template is a mapping")
        if args.replace:
            row = client.send("PUT", f"/api/templates/{_name(str(data.get('name')))}", data)
            out.write(f"template {row['name']}: replaced\n")
        else:
            row = client.post("/api/templates", data)
            out.write(f"template {row['name']}: created\n")
        return EXIT_OK
    if action == "rm":
        client.send("DELETE", f"/api/templates/{_name(args.name)}")
        out.write(f"template {args.name}: removed\n")
        return EXIT_OK
    if action == "show":
        row = client.get(f"/api/templates/{_name(args.name)}")
        if args.format == "json":
            out.write(json.dumps(row, indent=2) + "\n")
        else:
            out.write(yaml.safe_dump(row, sort_keys=False))
        return EXIT_OK
    rows = client.get("/api/templates")["templates"]
    if args.format == "json":
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    table = [
        (
            r["name"],
            r["kind"],
            r["pattern"] or "-",
            ",".join(p["name"] for p in r["params"]) or "-",
            r["approval"],
            "yes" if r["may_launch"] else "no",
        )
        for r in rows
    ]
    print_table(table, ("NAME", "KIND", "PATTERN", "PARAMS", "APPROVAL", "YOU MAY LAUNCH"), out)
    return EXIT_OK


def parse_params(pairs: list[str]) -> dict[str, str]:
    """`-p NAME=VALUE` pairs as a mapping (the server converts and checks each value)."""
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"-p {pair!r}: give NAME=VALUE")
        params[name.strip()] = value
    return params


def cmd_launch(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    body: dict[str, Any] = {"params": parse_params(args.param)}
    if args.limit:
        body["limit"] = args.limit
    data = client.post(f"/api/templates/{_name(args.template)}/launch", body)
    job_id = data["job"]["id"]
    if data.get("approval"):
        out.write(f"job {job_id}: awaiting approval (easytask approve {job_id} -m COMMENT)\n")
        if not args.follow:
            return EXIT_OK
        while True:
            approval = client.get(f"/api/jobs/{job_id}/approval")
            if approval["state"] != "awaiting approval":
                break
            time.sleep(WAIT_POLL)
        by = approval["decided_by"] or "the server"
        out.write(
            escape_controls(f"job {job_id}: {approval['state']} by {by}: {approval['comment']}")
            + "\n"
        )
        if approval["state"] != "approved" or not approval["launched_job"]:
            return EXIT_FAILED
        job_id = approval["launched_job"]
        data = client.get(f"/api/jobs/{job_id}")
    else:
        out.write(f"job {job_id}: started on {len(data['runs'])} host(s)\n")
    if args.format == "json" and not args.follow:
        out.write(json.dumps(data, indent=2) + "\n")
        return EXIT_OK
    if not args.follow:
        return EXIT_OK
    view = RunView(out, [r["host"] for r in data["runs"]]) if args.format == "text" else None
    if follow_interruptible(client, job_id, view):
        return 130
    final = client.get(f"/api/jobs/{job_id}")
    if args.format == "json":
        out.write(json.dumps(final, indent=2) + "\n")
    bad = [r for r in final["runs"] if r["state"] != "success"]
    for run in bad:
        out.write(escape_controls(f"{run['host']}: {run['state']} {run['reason']}") + "\n")
    return EXIT_FAILED if bad else EXIT_OK


def cmd_rules(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """`approvals rules list|add|remove|pause|resume`."""
    client = api_client(settings)
    action = args.rule_action or "list"
    if action != "list" and not args.target:
        what = "a host pattern" if action == "add" else "a rule id"
        raise UsageError(f"approvals rules {action} needs {what}")
    if action == "add":
        row = client.post("/api/approval-rules", {"pattern": args.target, "note": args.note})
        out.write(escape_controls(f"rule {row['id']}: {row['pattern']} needs approval") + "\n")
        return EXIT_OK
    if action == "remove":
        row = client.send("DELETE", f"/api/approval-rules/{_name(args.target)}", None)
        out.write(escape_controls(f"rule {row['id']}: {row['pattern']} removed") + "\n")
        return EXIT_OK
    if action in ("pause", "resume"):
        row = client.send(
            "PATCH", f"/api/approval-rules/{_name(args.target)}", {"paused": action == "pause"}
        )
        state = "paused" if row["paused"] else "active"
        out.write(escape_controls(f"rule {row['id']}: {row['pattern']} {state}") + "\n")
        return EXIT_OK
    rows = client.get("/api/approval-rules")["rules"]
    if args.format == "json":
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    table = [
        (
            str(r["id"]),
            r["pattern"],
            "server setting" if r["read_only"] else ("paused" if r["paused"] else "active"),
            r["created_by"],
            (r["created_at"] or "-")[:19].replace("T", " "),
            r["note"] or "-",
        )
        for r in rows
    ]
    print_table(table, ("ID", "PATTERN", "STATE", "BY", "CREATED", "NOTE"), out)
    return EXIT_OK


def cmd_approvals(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.action == "rules":
        return cmd_rules(args, settings, out)
    if args.rule_action or args.target:
        raise UsageError("approvals list takes no further arguments (approvals rules ...)")
    client = api_client(settings)
    rows = client.get("/api/approvals", state="all" if args.all else "awaiting")["approvals"]
    if args.format == "json":
        out.write(json.dumps(rows, indent=2) + "\n")
        return EXIT_OK
    table = [
        (
            str(r["job"]),
            r["template"] or f"{r['kind']} {r.get('pattern', '')}".strip(),
            r["requested_by"],
            " ".join(f"{k}={v}" for k, v in sorted(r["params"].items())) or "-",
            r["state"],
            r["decided_by"] or "-",
            r["expires_at"][:19].replace("T", " "),
        )
        for r in rows
    ]
    headers = ("JOB", "TEMPLATE", "REQUESTED BY", "PARAMS", "STATE", "DECIDED BY", "EXPIRES")
    print_table(table, headers, out)
    return EXIT_OK


def cmd_decide(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    row = client.post(f"/api/jobs/{args.job}/{args.verb}", {"comment": args.message})
    launched = f"; job {row['launched_job']} started" if row.get("launched_job") else ""
    out.write(f"job {args.job}: {row['state']}{launched}\n")
    return EXIT_OK
