"""`easytask demo`: a server on 127.0.0.1 with three local agents, ready for `easytask run`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from easytask.config import Settings, write_client_config
from easytask.server import Server
from easytask.service.agents import create_enroll_token, set_agent_labels

DEMO_AGENTS = {"web1": ["demo"], "web2": ["demo"], "db1": ["demo"]}


async def _demo(state: Path, http: str, agents_addr: str, out: TextIO) -> int:
    inventory = "inventory" if Path("inventory").exists() else None
    server = Server(
        Settings(
            state_dir=state / "server",
            http=http,
            agents=agents_addr,
            inventory=inventory,
            pending_timeout=30,
        )
    )
    await server.start()
    token = await create_enroll_token(server.services, "demo", "demo", len(DEMO_AGENTS), 600)
    procs: list[subprocess.Popen[bytes]] = []
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for name, groups in DEMO_AGENTS.items():
        cmd = [
            sys.executable,
            "-m",
            "easytask",
            "agent",
            "--server",
            f"127.0.0.1:{server.agents_port}",
            "--name",
            name,
            "--state-dir",
            str(state / "agents" / name),
            "--enroll",
            token,
        ]
        for group in groups:
            cmd += ["--group", group]
        with open(logs / f"agent-{name}.log", "ab") as log_file:
            procs.append(
                subprocess.Popen(cmd, stdout=log_file, stderr=log_file, start_new_session=True)
            )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        deadline = loop.time() + 30
        while not all(
            (info := server.registry.agents.get(n)) is not None and info.online for n in DEMO_AGENTS
        ):
            if loop.time() > deadline or stop.is_set():
                out.write(f"agents did not come online; see {logs}\n")
                return 3
            await asyncio.sleep(0.1)
        for name, groups in DEMO_AGENTS.items():  # the demo's own labels, approved (audited)
            await set_agent_labels(server.services, "demo", "demo", name, "approve", groups)
        config_path = state / "config.toml"
        write_client_config(config_path, server.http_url, server.admin_token)
        password = (server.state_dir / "admin.password").read_text().strip()
        out.write(
            "\nEasyTask demo is running.\n\n"
            f"  console:  {server.http_url}/   (login: admin / {password})\n"
            f"  agents:   {', '.join(DEMO_AGENTS)} online (logs in {logs})\n"
            f"  CLI:      configured in {config_path}; from another terminal in this directory:\n"
            "              .venv/bin/easytask run all -a 'uname -a'\n"
            "              .venv/bin/easytask runs\n"
            f"            elsewhere: export EASYTASK_CONFIG={config_path.resolve()}\n\n"
            "Press Ctrl-C to stop.\n"
        )
        out.flush()
        await stop.wait()
        out.write("\nstopping…\n")
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        await server.close()
    return 0


def run_demo(state: Path, http: str, agents: str, out: TextIO) -> int:
    """Run the demo until Ctrl-C."""
    return asyncio.run(_demo(state, http, agents, out))
