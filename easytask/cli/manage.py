"""Commands that read and manage what the server holds: `runs`, `jobs`, `logs`, `kill`,
`deliveries`, `agents`, `schedules`, `audit`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from easytask.cli.agentinstall import add_parser as add_install_parser
from easytask.cli.bootstrap import add_parser as add_bootstrap_parser
from easytask.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    FINAL,
    Parser,
    api_client,
    escape_controls,
    follow_job,
    print_json,
    print_table,
)
from easytask.cli.jobs import RAW_HELP, RunView
from easytask.config import Settings
from easytask.durations import format_duration
from easytask.errors import UsageError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Register `runs`, `jobs`, `logs`, `kill`, `deliveries`, `agents`, `schedules` and
    `audit`."""
    rs = sub.add_parser("runs", help="list runs, newest first")
    rs.add_argument("--since", help="ISO time or duration ago (1h, 2d)")
    rs.add_argument("--until", help="ISO time or duration ago")
    rs.add_argument("--status", help="success, failed, terminated, unreachable, ... (comma list)")
    rs.add_argument("--host")
    rs.add_argument("--task")
    rs.add_argument("--job", type=int)
    rs.add_argument("--limit", type=int, default=50)
    rs.add_argument("--format", choices=("text", "json"), default="text")
    rs.set_defaults(func=cmd_runs)

    jb = sub.add_parser("jobs", help="list jobs, newest first, with their runs by state")
    jb.add_argument("--since", help="ISO time or duration ago (1h, 2d)")
    jb.add_argument("--until", help="ISO time or duration ago")
    jb.add_argument("--status", help="the job's state: success, failed, running, ... (comma list)")
    jb.add_argument("--kind", choices=("adhoc", "playbook", "schedule"))
    jb.add_argument("--host", help="jobs with a run on this host (* and ? as wildcards)")
    jb.add_argument("--task", help="name, command, playbook or a task of it contains this")
    jb.add_argument("--user", help="submitted by this user")
    jb.add_argument("--before", type=int, help="jobs older than this job id (the next page)")
    jb.add_argument("--limit", type=int, default=50)
    jb.add_argument("--format", choices=("text", "json"), default="text")
    jb.set_defaults(func=cmd_jobs)

    lg = sub.add_parser("logs", help="print a run's output")
    lg.add_argument("run", type=run_number, help="the run: N or run:N")
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing while it runs")
    lg.add_argument("--level", help="DEBUG, INFO, WARN, ERROR (comma list)")
    lg.add_argument("--grep", help="only lines containing this text")
    lg.add_argument("--format", choices=("text", "json"), default="text")
    lg.add_argument("--raw", action="store_true", help=RAW_HELP)
    lg.set_defaults(func=cmd_logs)

    k = sub.add_parser("kill", help="terminate a run (N or run:N) or a whole job (job:N)")
    k.add_argument("target")
    k.set_defaults(func=cmd_kill)

    dl = sub.add_parser(
        "deliveries",
        help="webhook delivery attempts of a job (to admins with URL, HTTP status and error)",
    )
    dl.add_argument("job", type=int, help="the job's number")
    dl.add_argument("--format", choices=("text", "json"), default="text")
    dl.set_defaults(func=cmd_deliveries)

    ag = sub.add_parser(
        "agents",
        help="list agents; accept, revoke, delete; approve group labels; enrolment tokens; "
        "install files; bootstrap agents over SSH",
    )
    ag.add_argument("--format", choices=("text", "json"), default="text")
    agsub = ag.add_subparsers(dest="agents_command", metavar="ACTION", parser_class=Parser)
    for action in ("accept", "revoke"):
        x = agsub.add_parser(action, help=f"{action} an agent")
        x.add_argument("name")
        x.add_argument(
            "--fingerprint",
            help="the key the agent must hold (SHA256:..., as `agents` lists it); refused if "
            "it holds another",
        )
    for action, what in (
        ("approve", "approve group labels the agent reports: they place it in those groups"),
        ("withdraw", "withdraw approved group labels: they place it in no group again"),
    ):
        x = agsub.add_parser(action, help=what)
        x.add_argument("name")
        x.add_argument(
            "--groups",
            required=True,
            metavar="A,B",
            help="the labels, comma-separated (as `agents` lists them)",
        )
        x.add_argument(
            "--fingerprint",
            help="the key the agent must hold (SHA256:..., as `agents` lists it); refused if "
            "it holds another",
        )
    x = agsub.add_parser("show", help="one agent: its key, state, labels (pending or approved)")
    x.add_argument("name")
    x.add_argument("--format", choices=("text", "json"), default=argparse.SUPPRESS)
    x = agsub.add_parser("delete", help="delete a pending, revoked or disconnected agent's record")
    x.add_argument("name")
    t = agsub.add_parser("token", help="create an enrolment token")
    t.add_argument("--uses", type=int, default=1)
    t.add_argument("--ttl", help="lifetime, e.g. 1h")
    # also after `token` (`agents token --format json`); not given, `agents --format` holds
    t.add_argument("--format", choices=("text", "json"), default=argparse.SUPPRESS)
    add_install_parser(agsub)
    add_bootstrap_parser(agsub)
    ag.set_defaults(func=cmd_agents)

    sc = sub.add_parser(
        "schedules",
        help="schedules with next fire times: list, show, create, rm, pause, resume, run",
    )
    sc.add_argument("--format", choices=("text", "json"), default="text")
    scsub = sc.add_subparsers(dest="schedules_command", metavar="ACTION", parser_class=Parser)
    scsub.add_parser("list", help="every schedule, from files and stored (the default)")
    x = scsub.add_parser("show", help="one schedule, what it runs and its next fire times")
    x.add_argument("name")
    x = scsub.add_parser("create", help="store a schedule from a YAML or JSON file (admin)")
    x.add_argument("-f", "--file", required=True, help="the schedule (see docs/concepts.md)")
    x.add_argument("--replace", action="store_true", help="replace the schedule of that name")
    x = scsub.add_parser("rm", help="delete a stored schedule (admin)")
    x.add_argument("name")
    for action, helptext in (
        ("pause", "stop a schedule firing until it is resumed"),
        ("resume", "let a paused schedule fire again"),
        ("disable", "the same as pause"),
        ("enable", "the same as resume"),
        ("run", "start a schedule now, out of its timetable"),
    ):
        x = scsub.add_parser(action, help=helptext)
        x.add_argument("name")
    sc.set_defaults(func=cmd_schedules)

    au = sub.add_parser(
        "audit", help="the audit log (admin, auditor); `audit verify` checks the chain"
    )
    au.add_argument("--since", help="ISO time or duration ago (1h, 2d)")
    au.add_argument("--action", help="e.g. job.submit, job.kill, login.failed, agent.")
    au.add_argument("--actor")
    au.add_argument("--limit", type=int, default=100)
    au.add_argument("--format", choices=("text", "json"), default="text")
    ausub = au.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=Parser)
    ausub.add_parser(
        "verify",
        help="walk the keyed hash chain and check it against the signed checkpoints; exit 1 at "
        "the first bad row, a truncated end or an altered checkpoint",
    )
    ausub.add_parser(
        "checkpoint", help="sign and write a checkpoint of the chain's head now (admin)"
    )
    au.set_defaults(func=cmd_audit)


def cmd_runs(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    data = client.get(
        "/api/runs",
        since=args.since,
        until=args.until,
        status=args.status,
        host=args.host,
        task=args.task,
        job=args.job,
        limit=args.limit,
    )
    if args.format == "json":
        print_json(data["runs"], out)
        return EXIT_OK
    rows = [
        (
            r["id"],
            r["job"],
            r["host"],
            r["state"],
            "" if r["exit_code"] is None else r["exit_code"],
            (r["created_at"] or "")[:19].replace("T", " "),
            format_duration(r["duration"]) if r["duration"] is not None else "-",
            r["task"][:40],
        )
        for r in data["runs"]
    ]
    print_table(
        rows, ("RUN", "JOB", "HOST", "STATUS", "EXIT", "CREATED (UTC)", "DURATION", "TASK"), out
    )
    return EXIT_OK


def cmd_jobs(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    data = client.get(
        "/api/jobs",
        since=args.since,
        until=args.until,
        status=args.status,
        kind=args.kind,
        host=args.host,
        task=args.task,
        user=args.user,
        before=args.before,
        limit=args.limit,
    )
    if args.format == "json":
        print_json(data["jobs"], out)
        return EXIT_OK
    rows = [
        (
            j["id"],
            j["kind"],
            j["state"],
            " ".join(f"{state}={n}" for state, n in sorted(j["runs"].items())),
            j["submitted_by"],
            (j["created_at"] or "")[:19].replace("T", " "),
            escape_controls(j["name"])[:40],
        )
        for j in data["jobs"]
    ]
    print_table(rows, ("JOB", "KIND", "STATUS", "RUNS", "USER", "CREATED (UTC)", "NAME"), out)
    if data.get("next_before"):
        out.write(f"(more: --before {data['next_before']})\n")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    info = client.get(f"/api/runs/{args.run}")
    run = info["run"]
    data = client.get(f"/api/runs/{args.run}/log", level=args.level, grep=args.grep)
    if args.format == "json":
        print_json(data["lines"], out)
        return EXIT_OK
    for line in data["lines"]:
        prefix = {"stderr": "! ", "system": "* "}.get(line["stream"], "")
        out.write(f"{prefix}{line['text'] if args.raw else escape_controls(line['text'])}\n")
    if args.follow and run["state"] not in FINAL:
        view = RunView(out, [run["host"]], args.raw)
        if data["lines"]:
            view.seen[run["id"]] = data["lines"][-1]["seq"]
        follow_job(client, run["job"], view, run_id=run["id"])
    return EXIT_OK


def parse_target(text: str) -> tuple[str, int] | None:
    """`N`, `run:N`, `rN` -> ("run", N); `job:N`, `jN` -> ("job", N); None if neither."""
    target = text.strip().lower()
    kind, _, number = target.rpartition(":")
    if not kind and target[:1] in ("r", "j") and target[1:].isdigit():
        kind, number = target[0], target[1:]
    if not number.isdigit() or kind not in ("", "run", "r", "job", "j"):
        return None
    return ("job" if kind in ("job", "j") else "run"), int(number)


def run_number(text: str) -> int:
    """A run as `logs` takes it: N or run:N (as `kill` does)."""
    target = parse_target(text)
    if target is None or target[0] != "run":
        raise argparse.ArgumentTypeError(f"{text!r} is not RUN or run:N")
    return target[1]


def cmd_kill(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    target = parse_target(args.target)
    if target is None:
        raise UsageError(f"kill: {args.target!r} is not RUN, run:N or job:N")
    kind, number = target
    client = api_client(settings)
    if kind == "job":
        data = client.post(f"/api/jobs/{number}/kill")
        out.write(f"job {number}: asked {data['killed']} run(s) to terminate\n")
    else:
        client.post(f"/api/runs/{number}/kill")
        out.write(f"run {number}: terminating\n")
    return EXIT_OK


def cmd_deliveries(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    rows = api_client(settings).get(f"/api/jobs/{args.job}/deliveries")["deliveries"]
    if args.format == "json":
        print_json(rows, out)
        return EXIT_OK
    if rows and "url" not in rows[0]:  # the server shows the details to admins only
        print_table(
            [(r["at"], r["attempt"], r["result"]) for r in rows], ("AT", "ATTEMPT", "RESULT"), out
        )
        return EXIT_OK
    print_table(
        [
            (
                r["at"],
                r["attempt"],
                r["result"],
                r["status_code"] or "",
                f"{r['duration_ms']:.0f}ms",
                escape_controls(r["url"]),
                escape_controls(r["error"]),
            )
            for r in rows
        ],
        ("AT", "ATTEMPT", "RESULT", "HTTP", "TIME", "URL", "ERROR"),
        out,
    )
    return EXIT_OK


def _show_agent(agents: list[dict[str, Any]], name: str, fmt: str, out: TextIO) -> int:
    """`agents show NAME`: one agent, a field a line; its labels by what they do."""
    agent = next((a for a in agents if a["name"] == name), None)
    if agent is None:
        raise UsageError(f"no agent {name!r}")
    if fmt == "json":
        print_json(agent, out)
        return EXIT_OK
    approved = agent.get("approved") or []
    idle = [g for g in approved if g not in (agent.get("labels") or [])]
    fields = [
        ("name", agent["name"]),
        ("status", agent["status"]),
        ("busy", agent.get("busy") or ""),
        ("state", agent["state"]),
        ("key", agent["fingerprint"]),
        ("address", agent["address"]),
        ("version", agent["version"]),
        ("slots", agent["slots"]),
        ("labels", ",".join(agent.get("labels") or [])),
        ("groups", ",".join(agent["groups"])),
        ("pending labels", ",".join(agent.get("pending") or [])),
        ("approved, not reported", ",".join(idle)),
        ("last seen", (agent["last_seen"] or "")[:19].replace("T", " ")),
    ]
    for key, value in fields:
        out.write(f"{key + ':':24}{escape_controls(str(value))}\n")
    return EXIT_OK


def cmd_agents(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    action = args.agents_command
    if action in ("accept", "revoke", "delete"):
        fingerprint = getattr(args, "fingerprint", None)
        body = {"fingerprint": fingerprint} if fingerprint else {}
        data = client.post(f"/api/agents/{quote(args.name, safe='')}/{action}", body)
        out.write(
            f"agent {escape_controls(data['name'])}: {data['state']} "
            f"(key {escape_controls(data['fingerprint'])})\n"
        )
        return EXIT_OK
    if action in ("approve", "withdraw"):
        body = {"groups": [g.strip() for g in args.groups.split(",") if g.strip()]}
        if args.fingerprint:
            body["fingerprint"] = args.fingerprint
        data = client.post(f"/api/agents/{quote(args.name, safe='')}/{action}", body)
        approved = ",".join(data["approved"]) or "none"
        out.write(
            f"agent {escape_controls(data['name'])}: approved labels {escape_controls(approved)} "
            f"(key {escape_controls(data['fingerprint'])})\n"
        )
        return EXIT_OK
    if action == "token":
        data = client.post("/api/agents/tokens", {"uses": args.uses, "ttl": args.ttl})
        if args.format == "json":
            print_json(data, out)
        else:
            out.write(data["token"] + "\n")
        return EXIT_OK
    data = client.get("/api/agents")
    if action == "show":
        return _show_agent(data["agents"], args.name, args.format, out)
    if args.format == "json":
        print_json(data["agents"], out)
        return EXIT_OK
    rows = [
        (
            a["name"],
            f"{a['status']} ({a['busy']})" if a.get("busy") else a["status"],
            (a["since"] or "")[:19].replace("T", " "),
            (a["last_seen"] or "")[:19].replace("T", " "),
            a["address"],
            f"{a['running']}/{a['slots']}",
            ",".join(str(x) for x in (a["facts"].get("load") or [])[:1]),
            a["version"],
            ",".join(a["groups"]),
            ",".join(a.get("pending") or []),
        )
        for a in data["agents"]
    ]
    print_table(
        rows,
        (
            "NAME",
            "STATUS",
            "SINCE (UTC)",
            "LAST SEEN",
            "ADDRESS",
            "RUNNING",
            "LOAD",
            "VERSION",
            "GROUPS",
            "PENDING LABELS",
        ),
        out,
    )
    return EXIT_OK


def cmd_schedules(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    action = args.schedules_command or "list"
    if action == "create":
        return create_schedule(client, args, out)
    if action in ("show", "rm"):
        path = f"/api/schedules/{quote(args.name, safe='')}"
        if action == "rm":
            client.send("DELETE", path)
            out.write(f"schedule {args.name}: removed\n")
            return EXIT_OK
        row = client.get(path)
        if args.format == "json":
            print_json(row, out)
            return EXIT_OK
        import yaml  # only here: the server extra's, which an agent's install lacks

        out.write(yaml.safe_dump(row, sort_keys=False))
        return EXIT_OK
    if action != "list":
        data = client.post(f"/api/schedules/{quote(args.name, safe='')}/{action}")
        if action == "run":
            out.write(f"schedule {args.name}: started job {data['job']}\n")
        elif action in ("pause", "resume"):
            out.write(f"schedule {args.name}: {'resumed' if data['enabled'] else 'paused'}\n")
        else:
            out.write(f"schedule {args.name}: {'enabled' if data['enabled'] else 'disabled'}\n")
        return EXIT_OK
    data = client.get("/api/schedules")
    if args.format == "json":
        print_json(data["schedules"], out)
        return EXIT_OK
    rows = [
        (
            s["name"],
            s["cron"],
            s["tz"],
            "yes" if s["enabled"] else "no",
            (s["next_fire"] or "-")[:16].replace("T", " "),
            (s["last_fire"] or "-")[:16].replace("T", " "),
            s["last_job"] or "-",
            s["catch_up"],
            s.get("origin", "file"),
        )
        for s in data["schedules"]
    ]
    print_table(
        rows,
        (
            "NAME",
            "CRON",
            "TZ",
            "ENABLED",
            "NEXT (UTC)",
            "LAST (UTC)",
            "LAST JOB",
            "CATCH-UP",
            "FROM",
        ),
        out,
    )
    return EXIT_OK


def create_schedule(client: Any, args: argparse.Namespace, out: TextIO) -> int:
    """`schedules create -f FILE [--replace]`: store (or replace) a schedule."""
    import yaml  # only here: the server extra's, which an agent's install lacks

    try:
        data = yaml.safe_load(Path(args.file).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise UsageError(f"--file {args.file}: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"--file {args.file}: a schedule is a mapping")
    if args.replace:
        name = quote(str(data.get("name")), safe="")
        row = client.send("PUT", f"/api/schedules/{name}", data)
        out.write(f"schedule {row['name']}: replaced\n")
    else:
        row = client.post("/api/schedules", data)
        out.write(f"schedule {row['name']}: created\n")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    if args.audit_command == "verify":
        result = client.get("/api/audit/verify")
        if args.format == "json":
            print_json(result, out)
        elif result["ok"]:
            out.write(f"audit chain intact: {result['rows']} events, head {result['head']}\n")
        else:
            out.write(
                f"audit chain BROKEN after {result['rows']} good events: "
                f"{escape_controls(result['problem'])}\n"
            )
        return EXIT_OK if result["ok"] else EXIT_FAILED
    if args.audit_command == "checkpoint":
        written = client.post("/api/audit/checkpoint")
        if args.format == "json":
            print_json(written, out)
        elif written["written"]:
            point = written["checkpoint"]
            out.write(f"audit checkpoint: row {point['head_id']}, {point['count']} events\n")
        else:
            out.write("audit checkpoint: the chain has not moved since the last one\n")
        return EXIT_OK
    data = client.get(
        "/api/audit", since=args.since, action=args.action, actor=args.actor, limit=args.limit
    )
    if args.format == "json":
        print_json(data["events"], out)
        return EXIT_OK
    rows = [
        (
            e["id"],
            e["at"][:19].replace("T", " "),
            e["actor"],
            e["action"],
            e["source"],
            json.dumps(e["detail"], separators=(",", ":"))[:80],
        )
        for e in data["events"]
    ]
    print_table(rows, ("ID", "AT (UTC)", "ACTOR", "ACTION", "SOURCE", "DETAIL"), out)
    return EXIT_OK
