"""`easytask server`, `easytask agent` and `easytask demo`: the long-running processes."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, TextIO

from easytask.agent.link import HEDGE_AFTER
from easytask.cli.common import duration_arg, size_arg
from easytask.config import Settings, env_name
from easytask.errors import UsageError
from easytask.headroom import Limits, limits_from_vars
from easytask.proclog import FORMATS

__all__ = ["add_demo_parser", "add_parsers"]


def add_parsers(sub: Any) -> None:
    """Register `server` and `agent`."""
    s = sub.add_parser("server", help="run the scheduler: agent listener, API, console")
    names: list[str] = []

    def setting(*flags: str, name: str, help: str, **kwargs: Any) -> None:
        """A server option that is also the setting `name`: EASYTASK_NAME, `name =` in a file."""
        names.append(name)
        s.add_argument(*flags, dest=name, help=f"{help} ({env_name(name)})", **kwargs)

    setting("--state-dir", name="state_dir", help="where keys, tokens and the SQLite database live")
    setting("--db", name="db", help="database URL (default: SQLite in the state dir)")
    setting(
        "--agents", name="agents", help="ADDR:PORT to listen on for agents (default 127.0.0.1:8022)"
    )
    setting(
        "--http", name="http", help="ADDR:PORT for the API and console (default 127.0.0.1:8080)"
    )
    setting(
        "-i",
        "--inventory",
        name="inventory",
        action="append",
        metavar="PATH",
        help="inventory file, directory, script or 'host1,host2,' list; repeatable "
        "(default inventory)",
    )
    setting(
        "--inventory-timeout",
        name="inventory_timeout",
        type=duration_arg,
        help="how long one run of an inventory script may take (default 30s)",
    )
    setting(
        "--inventory-cache",
        name="inventory_cache",
        type=duration_arg,
        help="how long the output of an inventory script is reused before jobs run it again "
        "(default 30s; 0: every job runs it)",
    )
    setting(
        "--vault-password-file",
        name="vault_password_file",
        metavar="FILE",
        help="the Ansible Vault password for the inventory and playbooks: a file, or an "
        "executable that prints it (read once, at start)",
    )
    setting(
        "--vault-id",
        name="vault_id",
        action="append",
        metavar="LABEL@FILE",
        help="a vault id's password file or script, repeatable; comma-separated in the variable",
    )
    setting(
        "--pending-timeout",
        name="pending_timeout",
        type=duration_arg,
        help="how long a run waits for an offline agent (default 60s)",
    )
    setting(
        "--approval-expiry",
        name="approval_expiry",
        type=duration_arg,
        help="how long a template launch waits for approval before it expires (default 24h)",
    )
    setting(
        "--approval-hosts",
        name="approval_hosts",
        metavar="PATTERN",
        help="a host pattern: a template launch reaching one of its hosts waits for approval",
    )
    setting(
        "--keepalive",
        name="keepalive_interval",
        metavar="KEEPALIVE",
        type=duration_arg,
        help="SSH keepalive interval to agents (default 10s)",
    )
    setting(
        "--keepalive-count",
        name="keepalive_count",
        type=int,
        help="missed keepalives before unreachable (default 3)",
    )
    setting(
        "--agents-handshakes",
        name="agents_handshakes",
        type=int,
        help="agent connections in their handshake at once; no more is accepted meanwhile (the "
        "next wait in the kernel's queue, past it their agents retry after a jittered backoff), "
        "so a whole fleet reconnecting is admitted at a steady rate (default 64)",
    )
    setting(
        "--agents-pending-max",
        name="agents_pending_max",
        type=int,
        help="pending agent requests (names no admin has decided on) one address may hold, "
        "and new ones it may make per 10 minutes (default 10)",
    )
    setting(
        "--ssh-known-hosts", name="ssh_known_hosts", help="known_hosts file for agentless hosts"
    )
    setting(
        "--allow-local-connection",
        name="allow_local_connection",
        action="store_true",
        default=None,
        help="run the commands of inventory hosts with `ansible_connection: local` on this "
        "server's own host, as the server's user (default: refused)",
    )
    setting(
        "--reattach-timeout",
        name="reattach_timeout",
        type=duration_arg,
        help="how long a started run waits for its lost agent to come back (default 1h)",
    )
    setting(
        "--server-timeout",
        name="server_timeout",
        type=duration_arg,
        help="servers sharing a PostgreSQL database: silence after which another server takes "
        "over a server's work (default 15s; heartbeats every 1/5 of it)",
    )
    setting(
        "--playbooks",
        name="playbooks",
        help="directory whose playbooks with `schedule:` fire (default playbooks/)",
    )
    setting(
        "--output-limit",
        name="output_limit",
        type=size_arg,
        help="stored output per run, head and tail kept (default 256M; 0 = no limit)",
    )
    setting(
        "--log-format",
        name="log_format",
        choices=FORMATS,
        help="text, or json: one object per line",
    )
    setting("--public-url", name="public_url", help="the console's URL as users reach it")
    setting("--notify-url", name="notify_url", help="webhook called when a job finishes")
    setting(
        "--notify-events",
        name="notify_events",
        choices=("all", "failed"),
        help="which finished jobs call --notify-url (default all)",
    )
    setting(
        "--notify-allow",
        name="notify_allow",
        metavar="TARGET",
        action="append",
        help="where a playbook's `notify:` may send webhooks besides --notify-url: a URL prefix "
        "(https://hooks.example.com/services/) or HOST[:PORT] (*.example.com for subdomains); "
        "repeatable or comma-separated (default: nowhere else)",
    )
    setting(
        "--upload-limit",
        name="upload_limit",
        type=size_arg,
        help="largest file a copy or script may upload (default 1G)",
    )
    setting(
        "--log-buffer",
        name="log_buffer",
        type=size_arg,
        help="output held in memory while the database is slow or away; runs stop being read "
        "(their agents spool) once it is full (default 16M)",
    )
    setting(
        "--retention",
        name="retention",
        help="delete successful runs older than this, e.g. 90d (default: keep)",
    )
    setting(
        "--retention-failed",
        name="retention_failed",
        help="delete failed runs older than this, e.g. 365d (default: as --retention)",
    )
    setting(
        "--trusted-proxy",
        name="trusted_proxy",
        metavar="ADDR",
        help="believe X-Forwarded-For/-Proto only from this reverse proxy address; by default "
        "the client address is the TCP peer",
    )
    setting(
        "--token-max-ttl",
        name="token_max_ttl",
        help="longest life of an API token: a token asked without --ttl gets it, a longer "
        "one is refused (default 90d)",
    )
    setting(
        "--audit-key-file",
        name="audit_key_file",
        metavar="PATH",
        help="the audit chain's key; servers sharing a database share it (default "
        "STATE_DIR/audit.key, made on first start)",
    )
    setting(
        "--audit-checkpoint-url",
        name="audit_checkpoint_url",
        metavar="URL",
        help="POST each signed audit checkpoint to this URL too (retried in the background)",
    )
    setting(
        "--prune-interval",
        name="prune_interval",
        type=duration_arg,
        help="how often to prune (default 1h)",
    )
    setting(
        "--metrics-raw-retention",
        name="metrics_raw_retention",
        type=duration_arg,
        help="keep agents' raw host samples this long, then only their one-minute "
        "min/avg/max (default 24h)",
    )
    s.set_defaults(func=cmd_server, settings_from=tuple(names))

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
        "--enroll-file",
        metavar="FILE",
        help="read the enrolment token from this file, e.g. a systemd credential or a podman "
        "secret; an empty file is no token (EASYTASK_AGENT_ENROLL_FILE)",
    )
    a.add_argument(
        "--slots", type=int, help="commands run at once (default 4; EASYTASK_AGENT_SLOTS)"
    )
    a.add_argument(
        "--group",
        action="append",
        default=[],
        help="a group label, repeatable: a group membership once an admin approves it "
        "(EASYTASK_AGENT_GROUPS: comma-separated)",
    )
    a.add_argument("--keepalive", type=duration_arg, default=15.0, help="SSH keepalive interval")
    a.add_argument(
        "--keepalive-count", type=int, default=4, help="missed keepalives before reconnect"
    )
    a.add_argument(
        "--backoff-max", type=duration_arg, default=30.0, help="longest wait between reconnects"
    )
    a.add_argument(
        "--hedge-after",
        type=duration_arg,
        default=HEDGE_AFTER,
        help="with several --server addresses: how long a server may take to answer before "
        "the next one is dialled too (default 5s; the first to answer holds the link)",
    )
    a.add_argument(
        "--spool-cap",
        type=size_arg,
        default=2 << 30,
        help="output kept per run in the spool before the rest is cut (default 2G)",
    )
    a.add_argument(
        "--supervisor-idle",
        type=duration_arg,
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
        "--allow-become",
        action="append",
        default=[],
        metavar="USER,...",
        help="users a run may ask to become (become, run -b); default none "
        "(repeatable; EASYTASK_AGENT_ALLOW_BECOME: comma-separated)",
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
        "--file-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="file transfers may touch only paths inside DIR (repeatable; needed with --allow; "
        "EASYTASK_AGENT_FILE_DIRS: colon-separated)",
    )
    a.add_argument(
        "--pass-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass this variable of the agent's environment on to commands, e.g. https_proxy "
        "(repeatable; EASYTASK_AGENT_PASS_ENV: comma-separated)",
    )
    a.add_argument(
        "--metrics-interval",
        type=duration_arg,
        default=10.0,
        help="sample the host's CPU, memory, disk and network this often (default 10s; 0: never)",
    )
    a.add_argument(
        "--metrics-active-interval",
        type=duration_arg,
        default=1.0,
        help="... and this often while a run is active (default 1s; 0: as when idle)",
    )
    a.add_argument(
        "--max-load",
        type=float,
        metavar="LOAD",
        help="busy (no new work) while the 1-minute load per CPU is above this, e.g. 2.0 "
        "(EASYTASK_AGENT_MAX_LOAD)",
    )
    a.add_argument(
        "--min-free-memory",
        type=size_arg,
        metavar="SIZE",
        help="busy (no new work) while less memory than this is available, e.g. 256M "
        "(EASYTASK_AGENT_MIN_FREE_MEMORY)",
    )
    a.add_argument(
        "--heartbeat",
        type=duration_arg,
        default=5.0,
        help="how often the agent reports its load, memory and free slots (default 5s)",
    )
    a.add_argument(
        "--proc-root",
        metavar="DIR",
        help="read loadavg and meminfo here instead of /proc, e.g. the host's /proc mounted "
        "into a container (EASYTASK_AGENT_PROC_ROOT)",
    )
    a.add_argument(
        "--log-format",
        choices=FORMATS,
        help="text, or json: one object per line (EASYTASK_LOG_FORMAT)",
    )
    a.set_defaults(func=cmd_agent, settings_from=("log_format",))


def add_demo_parser(sub: Any) -> None:
    """Register `demo`."""
    d = sub.add_parser("demo", help="a local server with three agents, for a first look")
    d.add_argument("--dir", default=".easytask", help="where the demo keeps its state")
    d.add_argument("--http", default="127.0.0.1:8080")
    d.add_argument("--agents", default="127.0.0.1:8022")
    d.set_defaults(func=cmd_demo)


def cmd_server(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """`easytask server`: every option is a setting, resolved into `settings` already."""
    import asyncio  # the server and the agent only: other commands start faster without it

    from easytask.server import serve

    return asyncio.run(serve(settings))


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


def _enroll_file(path: str | None) -> str | None:
    """The enrolment token a file holds (surrounding white space dropped); None if it is empty."""
    if not path:
        return None
    try:
        return Path(path).read_text().strip() or None
    except OSError as exc:
        raise UsageError(f"--enroll-file {path}: {exc.strerror or exc}") from exc


def _limits(max_load: float | str | None, min_free: int | str | None) -> Limits:
    """The agent's --max-load and --min-free-memory (or their variables), checked."""
    try:
        return limits_from_vars(
            {"easytask_max_load": max_load, "easytask_min_free_memory": min_free}
        )
    except ValueError as exc:
        flag = "--max-load" if "max_load" in str(exc) else "--min-free-memory"
        raise UsageError(f"{flag}: {str(exc).partition(': ')[2]}") from exc


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
    limits = _limits(
        env.get("EASYTASK_AGENT_MAX_LOAD") if args.max_load is None else args.max_load,
        env.get("EASYTASK_AGENT_MIN_FREE_MEMORY")
        if args.min_free_memory is None
        else args.min_free_memory,
    )
    config = AgentConfig(
        server=server,
        name=name,
        state_dir=Path(state_dir),
        enroll=args.enroll
        or _enroll_file(args.enroll_file)
        or env.get("EASYTASK_AGENT_ENROLL")
        or _enroll_file(env.get("EASYTASK_AGENT_ENROLL_FILE"))
        or None,
        slots=slots,
        groups=groups,
        keepalive_interval=args.keepalive,
        keepalive_count=args.keepalive_count,
        backoff_max=args.backoff_max,
        hedge_after=args.hedge_after,
        spool_cap=args.spool_cap,
        supervisor_idle=args.supervisor_idle,
        run_as=args.run_as or env.get("EASYTASK_AGENT_RUN_AS") or None,
        allow=args.allow + _allow_file(args.allow_file or env.get("EASYTASK_AGENT_ALLOW_FILE")),
        files=not (args.no_files or env.get("EASYTASK_AGENT_NO_FILES", "") in ("1", "true")),
        file_dirs=args.file_dir
        or [d for d in env.get("EASYTASK_AGENT_FILE_DIRS", "").split(":") if d],
        pass_env=args.pass_env or env.get("EASYTASK_AGENT_PASS_ENV", "").split(","),
        allow_become=args.allow_become or [env.get("EASYTASK_AGENT_ALLOW_BECOME", "")],
        metrics_interval=args.metrics_interval,
        metrics_active_interval=args.metrics_active_interval,
        max_load=limits.max_load,
        min_free_memory=limits.min_free_memory,
        heartbeat=args.heartbeat,
        proc_root=Path(args.proc_root or env.get("EASYTASK_AGENT_PROC_ROOT") or "/proc"),
    )
    if config.slots < 1:
        raise UsageError("--slots must be at least 1")
    if config.heartbeat < 0.05:
        raise UsageError("--heartbeat must be at least 50ms")
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


def cmd_demo(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from easytask.demo import run_demo

    return run_demo(Path(args.dir), args.http, args.agents, out)
