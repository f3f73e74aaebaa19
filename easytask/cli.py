"""`easytask`: argument parsing, errors to exit codes; the work happens elsewhere."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from easytask import __version__, cli_db, cli_export, cli_inventory, cli_jobs, cli_security
from easytask.cli_common import (
    EXIT_BUG,
    EXIT_FAILED,
    EXIT_OK,
    FINAL,
    _client,
    _duration,
    _Parser,
    _print_json,
    _size,
    _table,
)
from easytask.cli_jobs import _follow_job, _RunView
from easytask.config import Settings, load_settings
from easytask.durations import format_duration, parse_duration
from easytask.errors import EasyTaskError, UsageError
from easytask.proclog import FORMATS, setup_logging


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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `only`, the global options and that command alone when it
    exists (building every command's parser takes longer than most commands run)."""
    if only is not None:
        p = _Parser(prog="easytask", description=DESCRIPTION)
        if _add_commands(p, only):
            return p
    p = _Parser(prog="easytask", description=DESCRIPTION)
    _add_commands(p, None)
    return p


def _add_commands(p: argparse.ArgumentParser, only: str | None) -> bool:
    """Add the global options and the commands (only `only` if given); False if it was absent."""
    p.add_argument("--version", action="version", version=f"easytask {__version__}")
    p.add_argument("--url", help="server URL (EASYTASK_URL)")
    p.add_argument("--token", help="API token (EASYTASK_TOKEN)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug details to stderr")
    top = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    top.required = True
    one = _OneCommand(top, only) if only is not None else None
    sub: Any = one if one is not None else top

    s = sub.add_parser("server", help="run the scheduler: agent listener, API, console")
    s.add_argument("--state-dir", help="where keys, tokens and the SQLite database live")
    s.add_argument("--db", help="database URL (default: SQLite in the state dir)")
    s.add_argument("--agents", help="ADDR:PORT to listen on for agents (default 127.0.0.1:8022)")
    s.add_argument("--http", help="ADDR:PORT for the API and console (default 127.0.0.1:8080)")
    s.add_argument("-i", "--inventory", help="inventory file or directory")
    s.add_argument(
        "--pending-timeout", type=_duration, help="how long a run waits for an offline agent"
    )
    s.add_argument(
        "--keepalive", type=_duration, default=10.0, help="SSH keepalive interval to agents"
    )
    s.add_argument(
        "--keepalive-count", type=int, default=3, help="missed keepalives before unreachable"
    )
    s.add_argument("--ssh-known-hosts", help="known_hosts file for agentless hosts")
    s.add_argument(
        "--reattach-timeout",
        type=_duration,
        default=3600.0,
        help="how long a started run waits for its lost agent to come back (default 1h)",
    )
    s.add_argument(
        "--server-timeout",
        type=_duration,
        default=15.0,
        help="servers sharing a PostgreSQL database: silence after which another server takes "
        "over a server's work (default 15s; heartbeats every 1/5 of it)",
    )
    s.add_argument(
        "--playbooks", help="directory whose playbooks with `schedule:` fire (default playbooks/)"
    )
    s.add_argument(
        "--output-limit",
        type=_size,
        default=256 << 20,
        help="stored output per run, head and tail kept (default 256M; 0 = no limit)",
    )
    s.add_argument(
        "--log-format",
        choices=FORMATS,
        help="text, or json: one object per line (EASYTASK_LOG_FORMAT)",
    )
    s.add_argument("--public-url", help="the console's URL as users reach it (EASYTASK_PUBLIC_URL)")
    s.add_argument("--notify-url", help="webhook called when a job finishes (EASYTASK_NOTIFY_URL)")
    s.add_argument(
        "--notify-events",
        choices=("all", "failed"),
        help="which finished jobs call --notify-url (default all; EASYTASK_NOTIFY_EVENTS)",
    )
    s.add_argument(
        "--upload-limit",
        type=_size,
        default=1 << 30,
        help="largest file a copy or script may upload (default 1G)",
    )
    s.add_argument(
        "--retention", help="delete successful runs older than this, e.g. 90d (default: keep)"
    )
    s.add_argument(
        "--retention-failed",
        help="delete failed runs older than this, e.g. 365d (default: as --retention)",
    )
    s.add_argument(
        "--trusted-proxy",
        metavar="ADDR",
        help="believe X-Forwarded-For/-Proto only from this reverse proxy address "
        "(EASYTASK_TRUSTED_PROXY); by default the client address is the TCP peer",
    )
    s.add_argument(
        "--prune-interval", type=_duration, default=3600.0, help="how often to prune (default 1h)"
    )
    s.set_defaults(func=cmd_server)

    a = sub.add_parser("agent", help="run a resident agent that dials out to a server")
    a.add_argument(
        "--server",
        help="server HOST:PORT, its agent port; A,B,... are tried in order (EASYTASK_AGENT_SERVER)",
    )
    a.add_argument(
        "--name", help="this agent's name, an inventory host name or new (EASYTASK_AGENT_NAME)"
    )
    a.add_argument(
        "--state-dir", help="where the agent keeps its key and spool (EASYTASK_AGENT_STATE_DIR)"
    )
    a.add_argument(
        "--enroll",
        metavar="TOKEN",
        help="enrolment token from `easytask agents token` (EASYTASK_AGENT_ENROLL)",
    )
    a.add_argument(
        "--slots", type=int, help="commands run at once (default 4; EASYTASK_AGENT_SLOTS)"
    )
    a.add_argument(
        "--group",
        action="append",
        default=[],
        help="a group label, repeatable (EASYTASK_AGENT_GROUPS: comma-separated)",
    )
    a.add_argument("--keepalive", type=_duration, default=15.0, help="SSH keepalive interval")
    a.add_argument(
        "--keepalive-count", type=int, default=4, help="missed keepalives before reconnect"
    )
    a.add_argument(
        "--backoff-max", type=_duration, default=30.0, help="longest wait between reconnects"
    )
    a.add_argument(
        "--spool-cap",
        type=_size,
        default=2 << 30,
        help="output kept per run in the spool before the rest is cut (default 2G)",
    )
    a.add_argument(
        "--supervisor-idle",
        type=_duration,
        default=60.0,
        help="the process that runs commands exits after this long without runs and starts "
        "again with the next one (default 60s; 0 keeps it)",
    )
    a.add_argument(
        "--run-as",
        metavar="USER",
        help="run commands and file transfers as this user (EASYTASK_AGENT_RUN_AS)",
    )
    a.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only commands matching this pattern, e.g. 'systemctl status *' (repeatable)",
    )
    a.add_argument(
        "--allow-file",
        metavar="FILE",
        help="allowlist patterns, one per line (# comments) (EASYTASK_AGENT_ALLOW_FILE)",
    )
    a.add_argument(
        "--no-files",
        action="store_true",
        help="refuse file transfers: copy, script, fetch (EASYTASK_AGENT_NO_FILES=1)",
    )
    a.add_argument(
        "--log-format",
        choices=FORMATS,
        help="text, or json: one object per line (EASYTASK_LOG_FORMAT)",
    )
    a.set_defaults(func=cmd_agent)

    cli_jobs.add_parsers(sub)

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

    lg = sub.add_parser("logs", help="print a run's output")
    lg.add_argument("run", type=int)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing while it runs")
    lg.add_argument("--level", help="DEBUG, INFO, WARN, ERROR (comma list)")
    lg.add_argument("--grep", help="only lines containing this text")
    lg.add_argument("--format", choices=("text", "json"), default="text")
    lg.set_defaults(func=cmd_logs)

    k = sub.add_parser("kill", help="terminate a run (N or run:N) or a whole job (job:N)")
    k.add_argument("target")
    k.set_defaults(func=cmd_kill)

    dl = sub.add_parser("deliveries", help="webhook delivery attempts of a job")
    dl.add_argument("job", type=int, help="the job's number")
    dl.add_argument("--format", choices=("text", "json"), default="text")
    dl.set_defaults(func=cmd_deliveries)

    ag = sub.add_parser("agents", help="list agents; accept, revoke; enrolment tokens")
    ag.add_argument("--format", choices=("text", "json"), default="text")
    agsub = ag.add_subparsers(dest="agents_command", metavar="ACTION", parser_class=_Parser)
    for action in ("accept", "revoke"):
        x = agsub.add_parser(action, help=f"{action} an agent")
        x.add_argument("name")
    t = agsub.add_parser("token", help="create an enrolment token")
    t.add_argument("--uses", type=int, default=1)
    t.add_argument("--ttl", help="lifetime, e.g. 1h")
    ag.set_defaults(func=cmd_agents)

    sc = sub.add_parser(
        "schedules", help="list schedules with next fire times; enable, disable, run"
    )
    sc.add_argument("--format", choices=("text", "json"), default="text")
    scsub = sc.add_subparsers(dest="schedules_command", metavar="ACTION", parser_class=_Parser)
    for action in ("enable", "disable", "run"):
        x = scsub.add_parser(action, help=f"{action} a schedule")
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
    ausub = au.add_subparsers(dest="audit_command", metavar="ACTION", parser_class=_Parser)
    ausub.add_parser("verify", help="walk the hash chain; exit 1 at the first bad row")
    au.set_defaults(func=cmd_audit)

    d = sub.add_parser("demo", help="a local server with three agents, for a first look")
    d.add_argument("--dir", default=".easytask", help="where the demo keeps its state")
    d.add_argument("--http", default="127.0.0.1:8080")
    d.add_argument("--agents", default="127.0.0.1:8022")
    d.set_defaults(func=cmd_demo)

    cli_inventory.add_parser(sub)
    cli_security.add_parsers(sub)
    cli_export.add_parsers(sub)
    cli_db.add_parsers(sub)
    return one is None or one.found


# -- helpers ---------------------------------------------------------------------------------


# -- commands --------------------------------------------------------------------------------


def cmd_server(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from easytask.server import ServerConfig, serve

    config = ServerConfig(
        state_dir=Path(args.state_dir or settings.state_dir),
        db=args.db or settings.db,
        agents=args.agents or settings.agents,
        http=args.http or settings.http,
        inventory=args.inventory or settings.inventory,
        pending_timeout=args.pending_timeout
        if args.pending_timeout is not None
        else settings.pending_timeout,
        keepalive_interval=args.keepalive,
        keepalive_count=args.keepalive_count,
        ssh_known_hosts=args.ssh_known_hosts,
        reattach_timeout=args.reattach_timeout,
        server_timeout=args.server_timeout,
        output_limit=args.output_limit,
        upload_limit=args.upload_limit,
        playbooks=args.playbooks or "playbooks",
        public_url=args.public_url or settings.public_url,
        notify_url=args.notify_url or settings.notify_url,
        notify_events=args.notify_events or settings.notify_events,
        notify_secret=settings.notify_secret,
        metrics_token=settings.metrics_token,
        retention=_optional_duration("retention", args.retention or settings.retention),
        retention_failed=_optional_duration(
            "retention_failed", args.retention_failed or settings.retention_failed
        ),
        prune_interval=args.prune_interval,
        trusted_proxy=args.trusted_proxy or os.environ.get("EASYTASK_TRUSTED_PROXY") or None,
    )
    import asyncio  # the server and the agent only: other commands start faster without it

    return asyncio.run(serve(config))


def _optional_duration(name: str, value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from exc
    if seconds <= 0:
        raise UsageError(f"{name} must be positive")
    return seconds


def _allow_file(path: str | None) -> list[str]:
    """Allowlist patterns from a file: one per line; blank lines and # comments ignored."""
    if not path:
        return []
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"--allow-file {path}: {exc.strerror or exc}") from exc
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def cmd_agent(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from easytask.agent.main import AgentConfig, serve

    env = os.environ
    server = args.server or env.get("EASYTASK_AGENT_SERVER")
    name = args.name or env.get("EASYTASK_AGENT_NAME")
    state_dir = args.state_dir or env.get("EASYTASK_AGENT_STATE_DIR")
    for flag, value in (("--server", server), ("--name", name), ("--state-dir", state_dir)):
        if not value:
            variable = "EASYTASK_AGENT_" + flag[2:].upper().replace("-", "_")
            raise UsageError(f"agent: {flag} is required (or set {variable})")
    slots = args.slots
    if slots is None:
        try:
            slots = int(env.get("EASYTASK_AGENT_SLOTS") or 4)
        except ValueError as exc:
            raise UsageError("EASYTASK_AGENT_SLOTS must be a number") from exc
    groups = args.group or [
        g.strip() for g in env.get("EASYTASK_AGENT_GROUPS", "").split(",") if g.strip()
    ]
    assert server and name and state_dir
    config = AgentConfig(
        server=server,
        name=name,
        state_dir=Path(state_dir),
        enroll=args.enroll or env.get("EASYTASK_AGENT_ENROLL") or None,
        slots=slots,
        groups=groups,
        keepalive_interval=args.keepalive,
        keepalive_count=args.keepalive_count,
        backoff_max=args.backoff_max,
        spool_cap=args.spool_cap,
        supervisor_idle=args.supervisor_idle,
        run_as=args.run_as or env.get("EASYTASK_AGENT_RUN_AS") or None,
        allow=args.allow + _allow_file(args.allow_file or env.get("EASYTASK_AGENT_ALLOW_FILE")),
        files=not (args.no_files or env.get("EASYTASK_AGENT_NO_FILES", "") in ("1", "true")),
    )
    if config.slots < 1:
        raise UsageError("--slots must be at least 1")
    import asyncio

    try:
        if not config.addresses:
            raise ValueError(server)
    except ValueError as exc:
        raise UsageError(f"--server: not HOST:PORT[,HOST:PORT...]: {server!r}") from exc
    try:
        return asyncio.run(serve(config))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def cmd_runs(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = _client(settings)
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
        _print_json(data["runs"], out)
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
    _table(rows, ("RUN", "JOB", "HOST", "STATUS", "EXIT", "CREATED (UTC)", "DURATION", "TASK"), out)
    return EXIT_OK


def cmd_logs(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = _client(settings)
    info = client.get(f"/api/runs/{args.run}")
    run = info["run"]
    data = client.get(f"/api/runs/{args.run}/log", level=args.level, grep=args.grep)
    if args.format == "json":
        _print_json(data["lines"], out)
        return EXIT_OK
    for line in data["lines"]:
        prefix = {"stderr": "! ", "system": "* "}.get(line["stream"], "")
        out.write(f"{prefix}{line['text']}\n")
    if args.follow and run["state"] not in FINAL:
        view = _RunView(out, [run["host"]])
        if data["lines"]:
            view.seen[run["id"]] = data["lines"][-1]["seq"]
        _follow_job(client, run["job"], view, run_id=run["id"])
    return EXIT_OK


def cmd_kill(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    target = args.target.strip().lower()
    kind, _, number = target.rpartition(":")
    if not kind and target[:1] in "rj" and target[1:].isdigit():
        kind, number = target[0], target[1:]
    if not number.isdigit() or kind not in ("", "run", "r", "job", "j"):
        raise UsageError(f"kill: {args.target!r} is not RUN, run:N or job:N")
    client = _client(settings)
    if kind in ("job", "j"):
        data = client.post(f"/api/jobs/{number}/kill")
        out.write(f"job {number}: asked {data['killed']} run(s) to terminate\n")
    else:
        client.post(f"/api/runs/{number}/kill")
        out.write(f"run {number}: terminating\n")
    return EXIT_OK


def cmd_deliveries(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    rows = _client(settings).get(f"/api/jobs/{args.job}/deliveries")["deliveries"]
    if args.format == "json":
        _print_json(rows, out)
        return EXIT_OK
    _table(
        [
            (
                r["at"],
                r["attempt"],
                "ok" if r["ok"] else "failed",
                r["status_code"] or "",
                f"{r['duration_ms']:.0f}ms",
                r["url"],
                r["error"],
            )
            for r in rows
        ],
        ("AT", "ATTEMPT", "RESULT", "HTTP", "TIME", "URL", "ERROR"),
        out,
    )
    return EXIT_OK


def cmd_agents(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = _client(settings)
    action = args.agents_command
    if action in ("accept", "revoke"):
        data = client.post(f"/api/agents/{args.name}/{action}")
        out.write(f"agent {data['name']}: {data['state']}\n")
        return EXIT_OK
    if action == "token":
        data = client.post("/api/agents/tokens", {"uses": args.uses, "ttl": args.ttl})
        if args.format == "json":
            _print_json(data, out)
        else:
            out.write(data["token"] + "\n")
        return EXIT_OK
    data = client.get("/api/agents")
    if args.format == "json":
        _print_json(data["agents"], out)
        return EXIT_OK
    rows = [
        (
            a["name"],
            a["status"],
            (a["since"] or "")[:19].replace("T", " "),
            (a["last_seen"] or "")[:19].replace("T", " "),
            a["address"],
            f"{a['running']}/{a['slots']}",
            ",".join(str(x) for x in (a["facts"].get("load") or [])[:1]),
            a["version"],
            ",".join(a["groups"]),
        )
        for a in data["agents"]
    ]
    _table(
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
        ),
        out,
    )
    return EXIT_OK


def cmd_schedules(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = _client(settings)
    action = args.schedules_command
    if action:
        data = client.post(f"/api/schedules/{args.name}/{action}")
        if action == "run":
            out.write(f"schedule {args.name}: started job {data['job']}\n")
        else:
            out.write(f"schedule {args.name}: {'enabled' if data['enabled'] else 'disabled'}\n")
        return EXIT_OK
    data = client.get("/api/schedules")
    if args.format == "json":
        _print_json(data["schedules"], out)
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
        )
        for s in data["schedules"]
    ]
    _table(
        rows,
        ("NAME", "CRON", "TZ", "ENABLED", "NEXT (UTC)", "LAST (UTC)", "LAST JOB", "CATCH-UP"),
        out,
    )
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = _client(settings)
    if args.audit_command == "verify":
        result = client.get("/api/audit/verify")
        if args.format == "json":
            _print_json(result, out)
        elif result["ok"]:
            out.write(f"audit chain intact: {result['rows']} events, head {result['head']}\n")
        else:
            out.write(
                f"audit chain BROKEN after {result['rows']} good events: {result['problem']}\n"
            )
        return EXIT_OK if result["ok"] else EXIT_FAILED
    data = client.get(
        "/api/audit", since=args.since, action=args.action, actor=args.actor, limit=args.limit
    )
    if args.format == "json":
        _print_json(data["events"], out)
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
    _table(rows, ("ID", "AT (UTC)", "ACTOR", "ACTION", "SOURCE", "DETAIL"), out)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from easytask.demo import run_demo

    return run_demo(Path(args.dir), args.http, args.agents, out)


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
        args = build_parser(command_of(argv)).parse_args(argv)
        if rest:
            if getattr(args, "command", None) != "run":
                raise UsageError(f"unexpected arguments after --: {' '.join(rest)}")
            args.script_args = rest
        setup_logging("text", args.verbose)
        settings = load_settings(
            {"url": args.url, "token": args.token, "log_format": getattr(args, "log_format", None)}
        )
        if settings.log_format != "text":
            setup_logging(settings.log_format, args.verbose)
        return int(args.func(args, settings, out))
    except EasyTaskError as exc:
        sys.stderr.write(f"easytask: {exc.render()}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except SystemExit as exc:  # argparse --help / --version
        return int(exc.code or 0)
    except Exception as exc:
        import tempfile  # only here: every command would pay for these imports
        import traceback

        fd, path = tempfile.mkstemp(prefix="easytask-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        sys.stderr.write(f"easytask: unexpected error: {exc!r} (traceback in {path})\n")
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
