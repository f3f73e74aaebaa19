"""`easytask`: argument parsing, errors to exit codes; the work happens elsewhere."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from easytask import __version__, cli_db, cli_export, cli_inventory, cli_security
from easytask.config import Settings, load_settings
from easytask.durations import format_duration, parse_duration, parse_size
from easytask.errors import EasyTaskError, UsageError
from easytask.logs import FORMATS, setup_logging

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_START, EXIT_BUG = 0, 1, 2, 3, 70
FINAL = {"success", "failed", "terminated", "unreachable", "skipped"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # usage errors exit 2 through our own path
        command = self.prog.partition(" ")[2]
        raise UsageError(f"{command}: {message}" if command else message)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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

    r = sub.add_parser("run", help="run an ad hoc command on the hosts a pattern matches")
    r.add_argument("pattern", help="host pattern, e.g. 'web:&prod:!db'")
    what = r.add_mutually_exclusive_group(required=True)
    what.add_argument("-a", "--args", dest="cmd", metavar="CMD", help="the shell command")
    what.add_argument(
        "--script",
        metavar="FILE",
        help="a local script: sent to each host, run, removed; its arguments go after `--`",
    )
    r.add_argument("--interpreter", help="run the script with this (default: its #! line)")
    r.set_defaults(script_args=[])
    r.add_argument("--timeout", type=_duration, help="terminate a host's command after this long")
    r.add_argument("--pending-timeout", type=_duration, help="wait this long for offline agents")
    r.add_argument("--forks", type=int, default=0, help="hosts at once (default: all)")
    r.add_argument(
        "--one",
        action="store_true",
        help="run on one host only: the least busy connected agent the pattern matches",
    )
    r.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME[=VALUE]",
        help="export NAME to the command, masked as **** in the output; "
        "without =VALUE the value comes from this environment (repeatable)",
    )
    r.add_argument("--format", choices=("text", "json"), default="text")
    r.set_defaults(func=cmd_run)

    cp = sub.add_parser("copy", help="send a file or directory to every host the pattern matches")
    cp.add_argument("pattern")
    cp.add_argument("src", help="local file or directory")
    cp.add_argument("dest", help="destination path on the hosts")
    cp.add_argument("--mode", help="file mode, e.g. 0644")
    cp.add_argument("--owner", help="chown the copied files to this user[:group]")
    cp.add_argument(
        "--backup", action="store_true", help="keep the previous version as DEST.TIMESTAMP~"
    )
    cp.add_argument("--timeout", type=_duration)
    cp.add_argument("--pending-timeout", type=_duration)
    cp.add_argument("--format", choices=("text", "json"), default="text")
    cp.set_defaults(func=cmd_copy)

    ck = sub.add_parser("checksum", help="SHA-256 of a file on every host, grouped by content")
    ck.add_argument("pattern")
    ck.add_argument("path")
    ck.add_argument("--expect", metavar="SHA256", help="exit 1 unless every host has this digest")
    ck.add_argument("--pending-timeout", type=_duration)
    ck.add_argument("--format", choices=("text", "json"), default="text")
    ck.set_defaults(func=cmd_checksum)

    fe = sub.add_parser("fetch", help="bring a file back from every host into DEST_DIR/HOST/")
    fe.add_argument("pattern")
    fe.add_argument("path")
    fe.add_argument("dest_dir")
    fe.add_argument("--pending-timeout", type=_duration)
    fe.set_defaults(func=cmd_fetch)

    pl = sub.add_parser("play", help="run a playbook (or --check it without a server)")
    pl.add_argument("playbook", help="playbook file, e.g. playbooks/health.yml")
    pl.add_argument("-l", "--limit", help="further limit the hosts with a pattern")
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
    pl.add_argument("-i", "--inventory", help="inventory for --check (default: settings)")
    pl.add_argument("--format", choices=("text", "json"), default="text")
    pl.set_defaults(func=cmd_play)

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


def _client(settings: Settings) -> Any:
    from easytask.client import Client

    return Client(settings.url, settings.token)


def _print_json(data: Any, out: TextIO) -> None:
    out.write(json.dumps(data, indent=2) + "\n")


def _table(rows: Sequence[Sequence[Any]], headers: Sequence[str], out: TextIO) -> None:
    cells = [[str(h) for h in headers]] + [
        ["" if c is None else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")


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


class _RunView:
    """Prints a job's live events: `host | line`, then a summary."""

    def __init__(self, out: TextIO, hosts: list[str]) -> None:
        self.out = out
        self.width = max((len(h) for h in hosts), default=4)
        self.seen: dict[int, int] = {}
        color = out.isatty() and not os.environ.get("NO_COLOR")
        self.red = "\033[31m" if color else ""
        self.dim = "\033[2m" if color else ""
        self.reset = "\033[0m" if color else ""

    def line(self, ev: dict[str, Any]) -> None:
        if ev["seq"] <= self.seen.get(ev["run"], 0):
            return
        self.seen[ev["run"]] = ev["seq"]
        host = ev["host"].ljust(self.width)
        if ev["stream"] == "stderr":
            self.out.write(f"{self.red}{host} ! {ev['text']}{self.reset}\n")
        elif ev["stream"] == "system":
            self.out.write(f"{self.dim}{host} * {ev['text']}{self.reset}\n")
        else:
            self.out.write(f"{host} | {ev['text']}\n")
        self.out.flush()


def _follow_job(client: Any, job_id: int, view: _RunView | None, run_id: int | None = None) -> None:
    # following a whole job, only its lines and its end are shown: no run-state events
    for ev in client.events(f"/api/jobs/{job_id}/events" + ("?runs=0" if run_id is None else "")):
        if ev["t"] == "line" and view is not None and (run_id is None or ev["run"] == run_id):
            view.line(ev)
        elif ev["t"] == "run" and run_id is not None and ev.get("id", ev.get("run")) == run_id:
            if ev["state"] in FINAL:
                return
        elif ev["t"] == "job":
            return


def _follow_interruptible(client: Any, job_id: int, view: _RunView | None) -> bool:
    """Follow a job; the first Ctrl-C kills it and keeps following, a second leaves (True)."""
    killed = False
    while True:
        try:
            _follow_job(client, job_id, view)
            return False
        except KeyboardInterrupt:
            if killed:
                sys.stderr.write("interrupted again: leaving; the server keeps the record\n")
                return True
            killed = True
            sys.stderr.write(f"\nterminating job {job_id} (Ctrl-C again to leave now)\n")
            client.post(f"/api/jobs/{job_id}/kill")


def _summary(data: dict[str, Any], elapsed: float, out: TextIO) -> int:
    runs = data["runs"]
    rows = [
        (
            r["host"],
            r["state"],
            "" if r["exit_code"] is None else r["exit_code"],
            format_duration(r["duration"]) if r["duration"] is not None else "-",
            r["reason"],
        )
        for r in runs
    ]
    out.write("\n")
    _table(rows, ("HOST", "STATUS", "EXIT", "DURATION", "REASON"), out)
    counts: dict[str, int] = {}
    for r in runs:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    parts = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    out.write(
        f"\njob {data['job']['id']}: {len(runs)} host(s): {parts} in {format_duration(elapsed)}\n"
    )
    return EXIT_OK if all(r["state"] == "success" for r in runs) else EXIT_FAILED


def _file_payload(path: Path, client: Any) -> dict[str, Any]:
    """A local file (streamed to POST /api/uploads) or directory (base64) as the API takes it."""
    import base64

    if path.is_file():
        return {"name": path.name, "upload": client.upload(path)["upload"]}
    if path.is_dir():
        files = {
            p.relative_to(path).as_posix(): base64.b64encode(p.read_bytes()).decode()
            for p in sorted(path.rglob("*"))
            if p.is_file()
        }
        return {"name": path.name, "files": files}
    if not path.is_file():
        raise UsageError(f"{path}: no such file or directory")
    return {"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()}


def cmd_run(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import shlex

    body: dict[str, Any] = {
        "pattern": args.pattern,
        "command": args.cmd or "",
        "timeout": args.timeout,
        "pending_timeout": args.pending_timeout,
        "forks": args.forks,
        "one": args.one,
    }
    if args.secret:
        body["secrets"] = _secrets(args.secret)
    if args.script:
        spec = _file_payload(Path(args.script), _client(settings))
        spec.update(args=shlex.join(args.script_args), interpreter=args.interpreter)
        body.update(kind="script", script=spec)
    elif args.script_args:
        raise UsageError("run: arguments after the pattern are only for --script")
    return _submit_and_follow(body, args.format, settings, out)


def _secrets(items: list[str]) -> dict[str, str]:
    """`--secret NAME=VALUE` or `--secret NAME` (the value from this process's environment)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            if name not in os.environ:
                raise UsageError(f"--secret {name}: no such environment variable")
            value = os.environ[name]
        out[name] = value
    return out


def cmd_copy(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    spec = _file_payload(Path(args.src), _client(settings))
    spec.update(dest=args.dest, mode=args.mode, owner=args.owner, backup=args.backup)
    body = {
        "pattern": args.pattern,
        "kind": "copy",
        "copy": spec,
        "timeout": args.timeout,
        "pending_timeout": args.pending_timeout,
    }
    return _submit_and_follow(body, args.format, settings, out)


def cmd_checksum(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import shlex

    q = shlex.quote(args.path)
    if args.path.startswith("~/"):  # each host's own home directory
        q = '"$HOME"/' + shlex.quote(args.path[2:])
    command = (
        f"if [ -f {q} ]; then sha256sum -- {q} | cut -d' ' -f1; "
        f"elif [ -e {q} ]; then echo 'not a regular file' >&2; exit 2; else echo missing; fi"
    )
    client = _client(settings)
    sub_data = client.post(
        "/api/jobs",
        {
            "pattern": args.pattern,
            "command": command,
            "name": f"checksum {args.path}",
            "pending_timeout": args.pending_timeout,
        },
    )
    job_id = sub_data["job"]["id"]
    _follow_job(client, job_id, None)
    data = client.get(f"/api/jobs/{job_id}")
    digests: dict[str, str] = {}
    for run in data["runs"]:
        if run["state"] != "success":
            digests[run["host"]] = f"error: {run['state']} ({run['reason']})"
            continue
        lines = client.get(f"/api/runs/{run['id']}/log")["lines"]
        text = next((ln["text"] for ln in lines if ln["stream"] == "stdout"), "")
        digests[run["host"]] = text.strip() or "missing"
    groups: dict[str, list[str]] = {}
    for host, digest in digests.items():
        groups.setdefault(digest, []).append(host)
    if args.format == "json":
        _print_json({"path": args.path, "hosts": digests, "groups": groups}, out)
    else:
        for digest, hosts in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            out.write(f"{digest}  {len(hosts)} host(s): {', '.join(sorted(hosts))}\n")
    if args.expect:
        bad = sorted(h for h, d in digests.items() if d != args.expect.lower())
        if bad:
            if args.format == "text":
                out.write(f"differ from --expect: {', '.join(bad)}\n")
            return EXIT_FAILED
        return EXIT_OK
    if len(groups) > 1:
        if args.format == "text":
            minority = sorted(groups.items(), key=lambda kv: len(kv[1]))[:-1]
            odd = sorted(h for _, hosts in minority for h in hosts)
            out.write(f"content differs: {', '.join(odd)}\n")
        return EXIT_FAILED
    return EXIT_OK if all(not d.startswith("error") for d in digests) else EXIT_FAILED


def cmd_fetch(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = _client(settings)
    sub_data = client.post(
        "/api/jobs",
        {
            "pattern": args.pattern,
            "kind": "fetch",
            "fetch": {"path": args.path},
            "pending_timeout": args.pending_timeout,
        },
    )
    job_id = sub_data["job"]["id"]
    _follow_job(client, job_id, None)
    data = client.get(f"/api/jobs/{job_id}")
    dest = Path(args.dest_dir)
    failed = 0
    for run in data["runs"]:
        if run["state"] != "success":
            out.write(f"{run['host']}: {run['state']}: {run['reason']}\n")
            failed += 1
            continue
        target = dest / run["host"] / (Path(args.path).name or "file")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(client.get_bytes(f"/api/runs/{run['id']}/fetched"))
        out.write(f"{run['host']}: {target} ({target.stat().st_size} bytes)\n")
    return EXIT_FAILED if failed else EXIT_OK


def _submit_and_follow(body: dict[str, Any], fmt: str, settings: Settings, out: TextIO) -> int:
    started = time.monotonic()
    client = _client(settings)
    args = argparse.Namespace(format=fmt)
    sub = client.post("/api/jobs", body)
    job_id = sub["job"]["id"]
    view = _RunView(out, [r["host"] for r in sub["runs"]]) if args.format == "text" else None
    if _follow_interruptible(client, job_id, view):
        return 130
    data = client.get(f"/api/jobs/{job_id}")
    if args.format == "json":
        _print_json(data, out)
        return EXIT_OK if all(r["state"] == "success" for r in data["runs"]) else EXIT_FAILED
    return _summary(data, time.monotonic() - started, out)


def cmd_play(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import base64

    from easytask.inventory import load_inventory
    from easytask.plan_playbook import (
        check_playbook,
        dumps_check,
        format_check,
        parse_extra_vars,
        plan_playbook,
    )
    from easytask.playbook import load_playbook

    started = time.monotonic()
    playbook = load_playbook(args.playbook)
    extra = parse_extra_vars(args.extra_vars)
    if args.check:
        inventory = load_inventory(args.inventory or settings.inventory)
        plan = plan_playbook(playbook, inventory, extra_vars=extra, limit=args.limit)
        checked = check_playbook(plan)
        out.write(dumps_check(checked) if args.format == "json" else format_check(plan, checked))
        return EXIT_USAGE if any(c.error for c in checked) else EXIT_OK
    base = Path(playbook.base_dir)
    files = {}
    for task in playbook.tasks:
        if task.action.path:
            rel = Path(task.action.path).resolve().relative_to(base.resolve())
            files[str(rel)] = base64.b64encode(Path(task.action.path).read_bytes()).decode()
    client = _client(settings)
    body = {
        "name": Path(args.playbook).name,
        "text": playbook.text,
        "files": files,
        "limit": args.limit,
        "extra_vars": extra,
    }
    sub_data = client.post("/api/playbooks/run", body)
    job_id = sub_data["job"]["id"]
    view = _RunView(out, [r["host"] for r in sub_data["runs"]]) if args.format == "text" else None
    if _follow_interruptible(client, job_id, view):
        return 130
    data = client.get(f"/api/jobs/{job_id}")
    if args.format == "json":
        _print_json(data, out)
    else:
        _recap(data, time.monotonic() - started, out)
    ok = {"success", "skipped"}
    return EXIT_OK if all(r["state"] in ok for r in _final_attempts(data["runs"])) else EXIT_FAILED


def _final_attempts(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last attempt of each (task, host): earlier failed attempts were retried."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for run in sorted(runs, key=lambda r: r["id"]):
        last[(run["task"], run["host"])] = run
    return list(last.values())


def _recap(data: dict[str, Any], elapsed: float, out: TextIO) -> None:
    runs = _final_attempts(data["runs"])
    out.write("\nTASKS\n")
    rows = [
        (
            r["task"],
            r["host"],
            r["state"],
            "" if r["exit_code"] is None else r["exit_code"],
            r["attempt"],
            format_duration(r["duration"]) if r["duration"] is not None else "-",
            r["reason"],
        )
        for r in runs
    ]
    _table(rows, ("TASK", "HOST", "STATUS", "EXIT", "TRY", "DURATION", "REASON"), out)
    out.write("\nRECAP\n")
    columns = ("ok", "failed", "skipped", "terminated", "unreachable")
    per_host: dict[str, dict[str, int]] = {}
    for r in runs:
        counts = per_host.setdefault(r["host"], dict.fromkeys(columns, 0))
        key = "ok" if r["state"] == "success" else r["state"]
        if key in counts:
            counts[key] += 1
    _table(
        [(host, *(c[k] for k in columns)) for host, c in per_host.items()],
        ("HOST", *(k.upper() for k in columns)),
        out,
    )
    out.write(
        f"\njob {data['job']['id']} ({data['job']['name']}): {data['job']['state']} "
        f"in {format_duration(elapsed)}\n"
    )


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
