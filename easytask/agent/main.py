"""The agent process: dial out, let the scheduler in as SSH client, run what it asks."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from easytask import __version__
from easytask.agent import facts, sftp
from easytask.agent.commands import Commands
from easytask.agent.hostmetrics import SPOOL, HostSampler
from easytask.agent.link import (
    HANDSHAKE_WAIT,
    HEDGE_AFTER,
    Backoff,
    NoServerListening,
    first_to_answer,
    keepalive_for,
    open_tcp,
)
from easytask.agent.policy import make_policy
from easytask.agent.runner import Runner, check_pass_env
from easytask.headroom import Limits
from easytask.names import check_labels, check_name
from easytask.transport import sshlog
from easytask.transport.control import (
    LINK_CIPHERS,
    SESSION_OP,
    SUBSYSTEM,
    without_padding_ignores,
)
from easytask.transport.executor import EXEC_HEADER_FEATURE
from easytask.transport.keys import load_or_create_key
from easytask.transport.linkrun import CONTROL_RUN_FEATURE, RUN_OP

log = logging.getLogger("easytask.agent")

AGENT_VERSION_PREFIX = "EasyTaskAgent_"
MAX_BEAT_EVERY = 300.0  # seconds: the slowest heartbeat pace a server may ask for


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
    hedge_after: float = HEDGE_AFTER  # s without a handshake before the next server is dialled too
    grace: float = 5.0
    spool_cap: int = 2 << 30
    supervisor_idle: float = 60.0  # seconds without runs before the supervisor exits (0: never)
    run_as: str | None = None  # see easytask.agent.policy
    allow: list[str] = field(default_factory=list)
    files: bool = True
    file_dirs: list[str] = field(default_factory=list)  # where file transfers may go (--file-dir)
    pass_env: list[str] = field(default_factory=list)  # variables commands get from the agent
    allow_become: list[str] = field(default_factory=list)  # users runs may become
    metrics_interval: float = 10.0  # seconds between host samples (0: no sampling)
    metrics_active_interval: float = 1.0  # ... while a run is active (0: as when idle)
    metrics_spool: int = SPOOL  # samples kept until a server has them
    max_load: float | None = None  # busy above this load per CPU (--max-load)
    min_free_memory: int | None = None  # busy below this many bytes available (--min-free-memory)
    heartbeat: float = 5.0  # seconds between heartbeats carrying the headroom (--heartbeat)
    proc_root: Path = Path("/proc")  # where loadavg and meminfo are read (--proc-root)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The servers' hosts and ports, in the order they are tried (`--server A,B`)."""
        return [split_address(part) for part in self.server.split(",") if part.strip()]

    @property
    def address(self) -> tuple[str, int]:
        """The first server's host and port."""
        return self.addresses[0]


def split_address(value: str) -> tuple[str, int]:
    """HOST:PORT (or [V6]:PORT, or HOST for port 8022) as a host and a port."""
    value = value.strip()
    host, _, port = value.rpartition(":")
    if not host or (value.startswith("[") and not host.endswith("]")):
        return value.strip("[]"), 8022
    return host.strip("[]"), int(port)


def agent_version_string(name: str) -> str:
    """The SSH version string that carries the agent's claimed name."""
    return f"{AGENT_VERSION_PREFIX}{__version__} {name}"


class _ServerSide(asyncssh.SSHServer):
    """Authenticates the scheduler by its pinned client key (pinned on first contact)."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        without_padding_ignores(conn)

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
        sshlog.install()  # asyncssh formats no debug message nobody reads
        # refused here, before anything is dialled or written (`BadName` is a ValueError)
        check_name(config.name)
        config.groups = check_labels(config.groups)
        self.config = config
        self.state_dir = config.state_dir
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.host_key = load_or_create_key(self.state_dir / "host_key")
        self.pinned_path = self.state_dir / "server_keys"
        self.policy = make_policy(
            config.run_as,
            config.allow,
            config.files,
            config.slots,
            config.file_dirs,
            config.allow_become,
        )
        self.runner = Runner(
            self.state_dir,
            cap=config.spool_cap,
            run_as=self.policy.run_as,
            supervisor_idle=config.supervisor_idle,
            pass_env=check_pass_env(config.pass_env),
            grace=config.grace,
        )
        self.runner.collect_garbage()
        self.sampler: HostSampler | None = None
        if config.metrics_interval > 0:
            self.sampler = HostSampler(
                config.metrics_interval,
                config.metrics_active_interval,
                self.runner.cwd,
                spool=config.metrics_spool,
            )
        self.commands = Commands(self.runner, self.policy, self._run_started)
        self.connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._conn: asyncssh.SSHServerConnection | None = None
        # the link the agent took at its last dial (None: none answered), known once chosen
        self._taken: asyncio.Future[asyncssh.SSHServerConnection | None] | None = None
        self._several_servers = len(config.addresses) > 1
        self.current_server = ""  # the HOST:PORT of the server the link is up to
        self._tasks: set[asyncio.Task[Any]] = set()
        # control sessions whose server asked for heartbeats (op "beats")
        self._beat_sinks: set[asyncssh.SSHServerProcess[bytes]] = set()
        self.beat_every = config.heartbeat  # the pace the server asked for (at least --heartbeat)

    def _run_started(self) -> None:
        if self.sampler is not None:
            self.sampler.wake()

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
            if not await self._on_taken_link(process):
                process.exit(1)
                return
            if process.subsystem == SUBSYSTEM:
                await self._control(process)
            elif process.subsystem:
                process.stderr.write(f"unknown subsystem {process.subsystem}\n".encode())
                process.exit(1)
            else:
                await self.commands.exec(process)
        except Exception:  # one bad session must never bring the agent down
            log.exception("session failed")
            if not process.is_closing():
                process.exit(255)

    async def _on_taken_link(self, process: asyncssh.SSHServerProcess[bytes]) -> bool:
        """Whether a session came on the link the agent took. Dialling two servers at once,
        both may answer, and a busy agent may be asked for its hello on both before it has
        closed the other: that one answers nothing (so no second server admits it). With one
        server there is no other link: nothing to wait for."""
        if not self._several_servers:
            return True
        taken = self._taken
        if taken is None:
            return False
        chosen = taken.result() if taken.done() else await asyncio.shield(taken)
        return process.get_extra_info("connection") is chosen

    def hello(self) -> dict[str, Any]:
        """Who this agent is: name, version, labels, slots, facts, enrolment token."""
        reply: dict[str, Any] = {
            "name": self.config.name,
            "version": __version__,
            "groups": self.config.groups,
            "slots": self.config.slots,
            "facts": {
                **facts.gather(self.runner.running),
                **self.headroom(),
                "user": self.policy.default_user,  # whom commands run as, unless they become
                "policy": self.policy.describe(),
            },
            "fingerprint": self.fingerprint,
            # see easytask.transport.executor and easytask.agent.commands
            "features": [EXEC_HEADER_FEATURE, CONTROL_RUN_FEATURE],
        }
        if self.config.enroll:
            reply["enroll"] = self.config.enroll
        return reply

    def headroom(self) -> dict[str, Any]:
        """This host's room for work now (see easytask.agent.facts.headroom)."""
        limits = Limits(self.config.max_load, self.config.min_free_memory)
        return facts.headroom(self.config.proc_root, self.runner.running, self.policy.slots, limits)

    def _beat_line(self) -> bytes:
        return (json.dumps({"beat": self.headroom()}) + "\n").encode()

    def beats_asked(self, sink: Any, req: dict[str, Any]) -> dict[str, Any]:
        """A server asked for heartbeats on a control session (`sink`): they follow on it, at
        the pace it asks (`every`, seconds: a server with many agents spaces them out) but never
        faster than --heartbeat. The reply is the first one, with the pace."""
        self._beat_sinks.add(sink)
        asked = req.get("every")
        if isinstance(asked, int | float) and not isinstance(asked, bool) and asked > 0:
            self.beat_every = max(self.config.heartbeat, min(float(asked), MAX_BEAT_EVERY))
        else:
            self.beat_every = self.config.heartbeat
        if self._conn is not None:
            interval, count = keepalive_for(
                self.beat_every,
                self.config.heartbeat,
                self.config.keepalive_interval,
                self.config.keepalive_count,
            )
            self._conn.set_keepalive(interval, count)
        return {"beat": self.headroom(), "every": self.beat_every}

    async def _heartbeats(self) -> None:
        """Every `beat_every` seconds, the headroom to each control session that asked for it."""
        while True:
            await asyncio.sleep(self.beat_every)
            sinks = [p for p in self._beat_sinks if not p.is_closing()]
            self._beat_sinks.intersection_update(sinks)
            if sinks:
                line = self._beat_line()
                for process in sinks:
                    try:
                        process.stdout.write(line)
                    except (asyncssh.Error, OSError):  # the session is going away
                        self._beat_sinks.discard(process)

    async def _control(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        raw = await process.stdin.readline()
        try:
            req = json.loads(raw or b"{}")
        except ValueError as exc:
            req = {"op": None, "bad": str(exc)}
        if isinstance(req, dict) and req.get("op") == SESSION_OP:
            await self._control_session(process)
            return
        process.stdout.write((json.dumps(await self._answer(req)) + "\n").encode())
        process.exit(0)

    async def _control_session(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """Answer requests until the server closes the session; replies carry the request id.
        When it closes, the runs it started go on (their followers here stop: the server
        re-attaches to them)."""
        pending: set[asyncio.Task[None]] = set()
        runs: set[asyncio.Task[None]] = set()

        async def answer(req: Any) -> None:
            if isinstance(req, dict) and req.get("op") == "beats":
                # heartbeats follow on this session, each a line without an id
                reply = self.beats_asked(process, req)
            else:
                reply = await self._answer(req)
            if not isinstance(req, dict) or "id" not in req:
                return  # a request without an id asks no reply (the server's acknowledgements)
            reply["id"] = req["id"]
            if not process.is_closing():
                process.stdout.write((json.dumps(reply) + "\n").encode())

        try:
            async for raw in process.stdin:
                try:
                    req = json.loads(raw)
                except ValueError as exc:
                    req = {"op": None, "bad": str(exc)}
                if isinstance(req, dict) and req.get("op") == "ack" and "id" not in req:
                    self.runner.ack_quietly(req)  # a few unlinks: here, no task, no reply
                    continue
                # a cancel waits out its grace period: it must not hold up the requests after it
                task = asyncio.create_task(answer(req), name="control-request")
                tasks = runs if isinstance(req, dict) and req.get("op") == RUN_OP else pending
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncssh.Error, OSError):
            pass
        finally:
            self._beat_sinks.discard(process)
            for task in runs:
                task.cancel()
            pending.update(runs)
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
            if not process.is_closing():
                process.exit(0)

    async def _answer(self, req: Any) -> dict[str, Any]:
        try:
            if not isinstance(req, dict):
                raise TypeError("a request is a JSON object")
            if "bad" in req:
                raise ValueError(req["bad"])
            op = req.get("op")
            if op == RUN_OP:
                return await self.commands.control_run(req)
            if op == "hello":
                return self.hello()
            if op == "facts":
                return {"facts": {**facts.gather(self.runner.running), **self.headroom()}}
            if op == "cancel":
                grace = float(req.get("grace", self.config.grace))
                found = await self.runner.terminate(str(req["run"]), grace, req.get("by", ""))
                return {"found": found}
            if op == "status":
                return self.runner.status(str(req["run"]))
            if op == "ack":
                return {"removed": await self.runner.ack_soon(self.runner.acked_keys(req))}
            if op == "list":
                return {"runs": {key: self.runner.status(key) for key in self.runner.run_keys()}}
            if op == "metrics":  # host samples after the newest the server has stored
                if self.sampler is None:
                    return {"disabled": True, "fields": [], "samples": []}
                return await self.sampler.batch(
                    float(req.get("after") or 0.0),
                    float(req.get("wait") or 0.0),
                    int(req.get("limit") or 600),
                )
            return {"error": f"unknown operation {op!r}"}
        except (ValueError, KeyError, TypeError) as exc:
            return {"error": f"bad request: {exc}"}

    # -- connection loop --------------------------------------------------------------------

    async def connect_once(self) -> asyncssh.SSHServerConnection:
        """Dial the servers in order and let the first that answers in as SSH client.

        Servers sharing one database are interchangeable to an agent: the first on the list is
        preferred; the next is tried when it fails, or dialled alongside it when it has not
        answered within --hedge-after seconds (it may hang: see `first_to_answer`).
        """
        taken = self._taken = asyncio.get_running_loop().create_future()
        try:
            self.current_server, conn = await first_to_answer(
                [
                    (f"{host}:{port}", functools.partial(self._dial, host, port))
                    for host, port in self.config.addresses
                ],
                close=lambda late: late.close(),
                failed=(TimeoutError, OSError, asyncssh.Error),
                hedge_after=self.config.hedge_after,
            )
        except BaseException:
            taken.set_result(None)
            raise
        taken.set_result(conn)
        return conn

    async def _dial(self, host: str, port: int) -> asyncssh.SSHServerConnection:
        sock = await open_tcp(host, port)
        try:
            return await asyncssh.connect_reverse(
                host,
                port,
                sock=sock,
                server_factory=lambda: _ServerSide(self),
                server_host_keys=[self.host_key],
                process_factory=self.handle,
                encoding=None,
                server_version=agent_version_string(self.config.name),
                sftp_factory=sftp.sftp_factory(self.policy),
                allow_scp=False,
                # no session of the agent's is interactive: a line editor in front of each
                # session's output would only cost every write a wrapper call
                line_editor=False,
                keepalive_interval=self.config.keepalive_interval,
                keepalive_count_max=self.config.keepalive_count,
                encryption_algs=LINK_CIPHERS,
                config=None,
                login_timeout=HANDSHAKE_WAIT,
                connect_timeout=HANDSHAKE_WAIT,
            )
        except BaseException:
            sock.close()
            raise

    async def run(self) -> None:
        """Stay connected until stopped, reconnecting with exponential backoff and jitter (see
        `Backoff`); sample the host meanwhile, connected or not."""
        sampling = None
        if self.sampler is not None:
            sampling = asyncio.create_task(
                self.sampler.run(lambda: self.runner.running > 0), name="agent-host-samples"
            )
        try:
            await self._connect_loop()
        finally:
            if sampling is not None:
                sampling.cancel()
                await asyncio.gather(sampling, return_exceptions=True)

    async def _connect_loop(self) -> None:
        backoff = Backoff(self.config.backoff_min, self.config.backoff_max)
        while not self._stop.is_set():
            started = asyncio.get_running_loop().time()
            refused = False
            try:
                conn = await self.connect_once()
            except (TimeoutError, OSError, asyncssh.Error) as exc:
                refused = isinstance(exc, NoServerListening)  # e.g. the server starting again
                log.warning(
                    "cannot connect to %s: %s", self.config.server, str(exc) or type(exc).__name__
                )
            else:
                self._conn = conn
                self.connected.set()
                self.write_status(True)
                log.info(
                    "connected to %s as %s",
                    self.current_server,
                    self.config.name,
                    extra={"server": self.current_server, "agent": self.config.name},
                )
                stop_wait = asyncio.create_task(self._stop.wait(), name="agent-stop-wait")
                closed = asyncio.create_task(conn.wait_closed(), name="agent-conn-closed")
                beats = asyncio.create_task(self._heartbeats(), name="agent-heartbeat")
                await asyncio.wait({stop_wait, closed}, return_when=asyncio.FIRST_COMPLETED)
                stop_wait.cancel()
                closed.cancel()
                beats.cancel()
                self._beat_sinks.clear()
                self.connected.clear()
                self.write_status(False)
                self._conn = None
                conn.close()
                log.info("disconnected from %s", self.current_server)
                if asyncio.get_running_loop().time() - started > 30:
                    backoff.reset()
            if self._stop.is_set():
                break
            try:
                async with asyncio.timeout(backoff.next_delay(refused)):
                    await self._stop.wait()
            except TimeoutError:
                pass

    def write_status(self, connected: bool) -> None:
        """STATE_DIR/status.json: whether the link is up (read by container health checks)."""
        status = {"pid": os.getpid(), "connected": connected, "since": time.time()}
        tmp = self.state_dir / "status.json.tmp"
        tmp.write_text(json.dumps(status) + "\n")
        os.replace(tmp, self.state_dir / "status.json")

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
    agent.write_status(False)
    # Runs are detached: they keep going (and keep their output) when the agent stops.
    try:
        await agent.run()
    finally:
        agent.write_status(False)
    return 0
