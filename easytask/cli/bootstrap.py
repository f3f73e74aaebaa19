"""`easytask agents bootstrap PATTERN`: the server installs agents on agentless hosts over
their SSH; this command starts it and prints each host's progress as it comes."""

from __future__ import annotations

import argparse
import time
from typing import Any, TextIO

from easytask.cli.common import EXIT_FAILED, EXIT_OK, api_client, duration_arg, escape_controls
from easytask.config import Settings

__all__ = ["add_parser"]

POLL = 0.5  # seconds between two looks at the progress


def add_parser(agsub: Any) -> None:
    """Register `agents bootstrap` under `agents`."""
    b = agsub.add_parser(
        "bootstrap",
        help="turn agentless hosts into agent hosts: the server installs, enrols and starts an "
        "agent on each over SSH (admin)",
    )
    b.add_argument("pattern", help="the hosts (a pattern of agentless inventory hosts)")
    b.add_argument("-l", "--limit", help="further limit the hosts to this pattern")
    b.add_argument(
        "--prefix",
        help="the directory on each host for the agent's venv, state and start files (default "
        "/opt/easytask-agent; a host's easytask_agent_prefix variable wins)",
    )
    b.add_argument(
        "--index-url",
        help="install easytask from this package index the hosts reach, instead of the "
        "server's own wheel sent over SFTP",
    )
    b.add_argument(
        "--server",
        help="the agent port the hosts reach the server at, HOST:PORT[,...] (default: the "
        "address the server listens on for agents)",
    )
    b.add_argument(
        "--timeout",
        type=duration_arg,
        default=120.0,
        help="how long each agent may take to come online once started (default 2m)",
    )
    b.set_defaults(func=cmd_bootstrap)


def cmd_bootstrap(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    """Start the bootstrap, print each host's steps as they come, then one line per host."""
    client = api_client(settings)
    body: dict[str, Any] = {"pattern": args.pattern, "timeout": args.timeout}
    for key in ("limit", "prefix", "index_url", "server"):
        if getattr(args, key):
            body[key] = getattr(args, key)
    data = client.post("/api/agents/bootstrap", body)
    shown: dict[str, int] = {}
    width = max((len(h["name"]) for h in data["hosts"]), default=4)
    out.write(f"bootstrap {data['id']}: {len(data['hosts'])} host(s)\n")
    while True:
        for host in data["hosts"]:
            for step in host["steps"][shown.get(host["name"], 0) :]:
                out.write(f"{escape_controls(host['name']):<{width}}  {escape_controls(step)}\n")
            shown[host["name"]] = len(host["steps"])
        out.flush()
        if data["done"]:
            break
        time.sleep(POLL)
        data = client.get(f"/api/agents/bootstrap/{data['id']}")
    failed = [h for h in data["hosts"] if h["state"] == "failed"]
    counts = {
        state: sum(1 for h in data["hosts"] if h["state"] == state)
        for state in ("done", "already", "failed")
    }
    out.write(
        f"bootstrap {data['id']}: {counts['done']} new agent(s), {counts['already']} already an "
        f"agent, {counts['failed']} failed\n"
    )
    for host in failed:
        out.write(f"  {escape_controls(host['name'])}: {escape_controls(host['reason'])}\n")
    return EXIT_FAILED if failed else EXIT_OK
