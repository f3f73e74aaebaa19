"""The agent process: dial out, let the scheduler in as SSH client, run what it asks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from easytask import __version__
from easytask.agent import facts
from easytask.agent.runner import CHUNK, Runner
from easytask.transport.control import SUBSYSTEM
from easytask.transport.keys import load_or_create_key

log = logging.getLogger("easytask.agent")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
AGENT_VERSION_PREFIX = "EasyTaskAgent_"


@dataclass
class AgentConfig:
    """How an agent reaches its server and who it is."""

    server: str
    name: str
    state_dir: Path
    enroll: str | None = None
    slots: int = 4
    groups: list[str] = field(default_factory=list)
    keepalive_interval: float = 15.0
    keepalive_count: int = 4
    backoff_min: float = 0.5
    backoff_max: float = 30.0
    grace: float = 5.0

    @property
    def address(self) -> tuple[str, int]:
        """The server's host and port."""
        host, _, port = self.server.rpartition(":")
        if not host:
            return self.server, 8022
        return host.strip("[]"), int(port)


def agent_version_string(name: str) -> str:
    """The SSH version string that carries the agent's claimed name."""
    return f"{AGENT_VERSION_PREFIX}{__version__} {name}"


class _ServerSide(asyncssh.SSHServer):
    """Authenticates the scheduler by its pinned client key (pinned on first contact)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def begin_auth(self, username: str) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return self._agent.check_server_key(key)


class Agent:
    """One resident agent."""

    def __init__(self, config: AgentConfig) -> None:
        if not NAME_RE.match(config.name):
            raise ValueError(
                f"agent name {config.name!r} is not valid: use letters, digits, '.', '_' and '-'"
            )
        self.config = config
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host_key = load_or_create_key(self.state_dir / "host_key")
        self.pinned_path = self.state_dir / "server_keys"
        self.runner = Runner()
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._conn: asyncssh.SSHServerConnection | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def fingerprint(self) -> str:
        """The SHA-256 fingerprint of the agent's host key."""
        return self.host_key.get_fingerprint("sha256")

    # -- server key pinning -----------------------------------------------------------------

    def check_server_key(self, key: asyncssh.SSHKey) -> bool:
        """Accept the pinned server key; pin the first one seen if none is pinned."""
        public = key.export_public_key("openssh").decode().strip()
        if self.pinned_path.exists():
            pinned = {
                " ".join(line.split()[:2])
                for line in self.pinned_path.read_text().splitlines()
                if line.strip() and not line.startswith("#")
            }
            ok = " ".join(public.split()[:2]) in pinned
            if not ok:
                log.warning("refused a server with unpinned key %s", key.get_fingerprint("sha256"))
            return ok
        self.pinned_path.write_text(public + "\n")
        os.chmod(self.pinned_path, 0o600)
        log.info("pinned server key %s", key.get_fingerprint("sha256"))
        return True

    # -- requests from the server -----------------------------------------------------------

    async def handle(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Serve one session: a control request or a command."""
        try:
            if process.subsystem == SUBSYSTEM:
                await self._control(process)
            elif process.subsystem:
                process.stderr.write(f"unknown subsystem {process.subsystem}\n".encode())
                process.exit(1)
            else:
                await self._exec(process)
        except Exception:  # one bad session must never bring the agent down
            log.exception("session failed")
            if not process.is_closing():
                process.exit(255)

    def hello(self) -> dict[str, Any]:
        """Who this agent is: name, version, labels, slots, facts, enrolment token."""
        reply: dict[str, Any] = {
            "name": self.config.name,
            "version": __version__,
            "groups": self.config.groups,
            "slots": self.config.slots,
            "facts": facts.gather(self.runner.running),
            "fingerprint": self.fingerprint,
        }
        if self.config.enroll:
            reply["enroll"] = self.config.enroll
        return reply

    async def _control(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        raw = await process.stdin.readline()
        try:
            req = json.loads(raw or b"{}")
            op = req.get("op")
            if op == "hello":
                reply = self.hello()
            elif op == "facts":
                reply = {"facts": facts.gather(self.runner.running)}
            elif op == "cancel":
                grace = float(req.get("grace", self.config.grace))
                found = await self.runner.terminate(str(req["run"]), grace, req.get("by", ""))
                reply = {"found": found}
            else:
                reply = {"error": f"unknown operation {op!r}"}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"bad request: {exc}"}
        process.stdout.write((json.dumps(reply) + "\n").encode())
        process.exit(0)

    async def _exec(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command or ""
        env = dict(process.env)
        run_id = env.get("EASYTASK_RUN_ID", "")
        attempt = env.get("EASYTASK_ATTEMPT", "1")
        key = f"{run_id}-{attempt}" if run_id else f"adhoc-{id(process)}"
        if not command:
            process.stderr.write(b"easytask agent: no command given\n")
            process.exit(2)
            return
        extra = {"EASYTASK_RUN_ID": run_id, "EASYTASK_ATTEMPT": attempt} if run_id else {}
        try:
            job = await self.runner.start(key, command, extra)
        except OSError as exc:
            process.stderr.write(f"easytask agent: cannot start: {exc}\n".encode())
            process.exit(127)
            return
        assert job.proc.stdout is not None and job.proc.stderr is not None
        link_ok = [True]

        async def pump(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter[bytes]) -> None:
            while True:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    return
                if not link_ok[0]:
                    continue  # keep draining so the command never blocks on a full pipe
                try:
                    writer.write(chunk)
                    await writer.drain()
                except (asyncssh.Error, OSError, BrokenPipeError):
                    link_ok[0] = False

        # Reading stdin lets the session notice signals and the client's EOF.
        drain_stdin = asyncio.create_task(self._drain(process), name=f"stdin-{key}")
        try:
            await asyncio.gather(
                pump(job.proc.stdout, process.stdout), pump(job.proc.stderr, process.stderr)
            )
            rc = await job.proc.wait()
        finally:
            drain_stdin.cancel()
            self.runner.finished(job)
        if process.is_closing():
            return
        if rc < 0:
            try:
                name = signal.Signals(-rc).name.removeprefix("SIG")
            except ValueError:
                name = str(-rc)
            process.exit_with_signal(name)
        else:
            process.exit(rc)

    @staticmethod
    async def _drain(process: asyncssh.SSHServerProcess[bytes]) -> None:
        try:
            while await process.stdin.read(CHUNK):
                pass
        except (asyncssh.Error, OSError):
            pass

    # -- connection loop --------------------------------------------------------------------

    async def connect_once(self) -> asyncssh.SSHServerConnection:
        """Dial the server once and let it in as SSH client."""
        host, port = self.config.address
        return await asyncssh.connect_reverse(
            host,
            port,
            server_factory=lambda: _ServerSide(self),
            server_host_keys=[self.host_key],
            process_factory=self.handle,
            encoding=None,
            server_version=agent_version_string(self.config.name),
            keepalive_interval=self.config.keepalive_interval,
            keepalive_count_max=self.config.keepalive_count,
            config=None,
            login_timeout=30,
            connect_timeout=15,
        )

    async def run(self) -> None:
        """Stay connected until stopped, reconnecting with exponential backoff and jitter."""
        backoff = self.config.backoff_min
        while not self._stop.is_set():
            started = asyncio.get_running_loop().time()
            try:
                conn = await self.connect_once()
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                log.warning("cannot connect to %s: %s", self.config.server, exc or type(exc).__name__)
            else:
                self._conn = conn
                self.connected.set()
                log.info("connected to %s as %s", self.config.server, self.config.name)
                stop_wait = asyncio.create_task(self._stop.wait(), name="agent-stop-wait")
                closed = asyncio.create_task(conn.wait_closed(), name="agent-conn-closed")
                await asyncio.wait({stop_wait, closed}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                closed.cancel()
                self.connected.clear()
                self._conn = None
                conn.close()
                log.info("disconnected from %s", self.config.server)
                if asyncio.get_running_loop().time() - started > 30:
                    backoff = self.config.backoff_min
            if self._stop.is_set():
                break
            delay = backoff * (0.5 + random.random())
            backoff = min(backoff * 2, self.config.backoff_max)
            try:
                async with asyncio.timeout(delay):
                    await self._stop.wait()
            except TimeoutError:
                pass

    def stop(self) -> None:
        """Ask the connection loop to end."""
        self._stop.set()
        if self._conn is not None:
            self._conn.close()


async def serve(config: AgentConfig) -> int:
    """Run an agent until SIGINT/SIGTERM; then stop its commands cleanly."""
    agent = Agent(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, agent.stop)
    log.info("agent %s (key %s) starting", config.name, agent.fingerprint)
    try:
        await agent.run()
    finally:
        await agent.runner.terminate_all(config.grace)
    return 0
