"""The scheduler's side of agent links: `listen_reverse`, agents pinned by host-key fingerprint."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import resource
import socket
from typing import Any, Literal, Protocol

import asyncssh

from easytask.transport import control

log = logging.getLogger("easytask.server")

Verdict = Literal["trusted", "probe", "refuse"]
AGENT_VERSION_PREFIX = "EasyTaskAgent_"
# seconds: acknowledgements no command carried go out in one message after this to twice this,
# spread so a fan-out's links do not all send theirs in the same moment (a burst that stalled live
# output)
ACK_DELAY = 5.0
# descriptors kept for everything but agent links: the database, the web server and its clients,
# agentless SSH, scripts, log and state files
SPARE_FILES = 256


def raise_open_files() -> tuple[int, int]:
    """Raise this process's open-file limit to its hard limit (each agent link holds one
    descriptor); returns (the limit now, the agent links it leaves room for)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY:
        wanted = soft
    if soft != wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, wanted, exc)
    return soft, max(soft - SPARE_FILES, soft // 2)


def claimed_name(server_version: str | None) -> str | None:
    """The agent name carried in an agent's SSH version string, if any."""
    if not server_version:
        return None
    _, _, rest = server_version.partition("SSH-2.0-")
    software, _, comment = rest.partition(" ")
    if not software.startswith(AGENT_VERSION_PREFIX):
        return None
    name = comment.strip()
    return name or None


class Gate(Protocol):
    """Decides which agents may connect; implemented by the agent registry."""

    def check_key(self, name: str | None, fingerprint: str, public_key: str, addr: str) -> Verdict:
        """Called during key exchange: trusted (pinned), probe (hello only) or refuse."""

    async def admit(self, link: AgentLink, hello: dict[str, Any], trusted: bool) -> bool:
        """Called once the link is up and the agent said hello; False closes it."""

    def refuse(self, name: str | None, fingerprint: str, addr: str, reason: str) -> None:
        """Called when a peer gave no usable hello (its link is closed)."""

    def lost(self, link: AgentLink, exc: Exception | None) -> None:
        """Called when an admitted link goes away."""


class AgentLink:
    """One connected agent: an SSH client connection the executor can use."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        name: str | None,
        fingerprint: str,
        public_key: str,
        addr: str,
        trusted: bool,
    ) -> None:
        self.conn = conn
        self.name = name
        self.fingerprint = fingerprint
        self.public_key = public_key
        self.addr = addr
        self.trusted = trusted
        self.admitted = False
        self.control = control.ControlChannel(conn)
        self.keepalive = (0.0, 0)  # the listener's interval and count (set when it accepts)
        self.beats_every = 0.0  # the heartbeat pace its agent was last asked for (s)
        self.features: frozenset[str] = frozenset()  # what its hello says it can do
        self._acks: list[str] = []
        self._ack_timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send a control request to the agent (over the link's long-lived control session)."""
        return await self.control.request(op, **args)

    def acknowledge(self, key: str) -> None:
        """Let the agent delete the spool of an ended run (its lines are stored).

        Deleting a spool is never urgent: the key rides on the next command sent to the agent
        (`EASYTASK_ACK`, see `take_acks`), or, when none comes within `ACK_DELAY` (up to twice that,
        spread at random over the links), goes out with
        the others in one message on the control session that asks no reply (the agent deletes
        only the spools it is told of: one it never hears of stays, and goes after a week).
        """
        self._acks.append(key)
        if self._ack_timer is None:
            delay = ACK_DELAY * (1.0 + random.random())
            self._ack_timer = asyncio.get_running_loop().call_later(delay, self._send_acks)

    def take_acks(self) -> list[str]:
        """The acknowledgements waiting to be sent, for a command about to go to the agent."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        keys, self._acks = self._acks, []
        return keys

    def _send_acks(self) -> None:
        keys = self.take_acks()
        if not keys:
            return
        try:
            if self.control.tell_now("ack", runs=keys):  # the usual case: no task, no reply
                return
        except (asyncssh.Error, OSError) as exc:  # the spools stay; removed after a week
            log.info("agent %s: could not acknowledge %d run(s): %s", self.name, len(keys), exc)
            return
        task = asyncio.create_task(self._ack(keys), name="agent-ack")  # opens the session
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _ack(self, keys: list[str]) -> None:
        try:
            # no reply asked: one message to the agent instead of a request and its answer
            # (an agent from before answers anyway, a line the heartbeats' reader ignores)
            await self.control.tell("ack", runs=keys)
        except Exception as exc:  # the spools stay; the agent removes them after a week
            log.info("agent %s: could not acknowledge %d run(s): %s", self.name, len(keys), exc)

    async def flush_acks(self) -> None:
        """Send the acknowledgements waiting now (before the link closes)."""
        self._send_acks()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    def keepalive_at_least(self, seconds: float) -> None:
        """Keepalives on this link no more often than every `seconds` (its agent's heartbeat
        pace: any data received resets the keepalive timer, so a beat is a keepalive)."""
        interval, count = self.keepalive
        if interval > 0 and seconds > interval:
            self.conn.set_keepalive(seconds, count)

    def close(self) -> None:
        """Close the link."""
        self.conn.close()


class _AgentClient(asyncssh.SSHClient):
    """The SSH-client half of one reverse connection."""

    def __init__(self, listener: AgentListener) -> None:
        self._listener = listener
        self._conn: asyncssh.SSHClientConnection | None = None
        self.name: str | None = None
        self.fingerprint = ""
        self.public_key = ""
        self.addr = ""
        self.verdict: Verdict = "refuse"
        self.link: AgentLink | None = None
        self.counted = False  # holds one of the listener's handshake places
        self.open = False  # counted among the listener's links

    def connection_made(self, conn: asyncssh.SSHClientConnection) -> None:
        self._conn = conn
        control.without_padding_ignores(conn)

    def handshake_done(self) -> None:
        """The connection no longer holds a handshake place (admitted, refused or gone)."""
        if self.counted:
            self.counted = False
            self._listener.handshaking -= 1
            self._listener.room.set()

    def gone(self) -> None:
        """The connection is closed: its descriptor is free."""
        self.handshake_done()
        if self.open:
            self.open = False
            self._listener.links -= 1

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        assert self._conn is not None
        self.name = claimed_name(self._conn.get_extra_info("server_version"))
        self.fingerprint = key.get_fingerprint("sha256")
        self.public_key = key.export_public_key("openssh").decode().strip()
        self.addr = addr
        self.verdict = self._listener.gate.check_key(
            self.name, self.fingerprint, self.public_key, addr
        )
        return self.verdict != "refuse"

    def connection_lost(self, exc: Exception | None) -> None:
        self.gone()
        if self.link is not None and self.link.admitted:
            self._listener.gate.lost(self.link, exc)


class AgentListener:
    """Accepts agents' outbound connections and hands admitted links to the gate."""

    def __init__(
        self,
        gate: Gate,
        client_key: asyncssh.SSHKey,
        keepalive_interval: float = 10.0,
        keepalive_count: int = 3,
        handshakes: int = 64,
        max_links: int = 0,
        open_files: int = 0,
    ) -> None:
        self.gate = gate
        # agent connections open at once, at most `max_links` (what the open-file limit,
        # `open_files`, leaves room for; 0: no bound): one more is closed at once
        self.max_links = max_links
        self.open_files = open_files
        self.links = 0
        self.over_limit = 0  # connections closed so, since the start
        # connections between their TCP accept and the end of their admission, at most
        # `max_handshakes`: no more is accepted meanwhile; the next wait in the kernel's queue
        # (`backlog`), costing the server nothing, and past it their agents retry later
        self.max_handshakes = handshakes
        self.handshaking = 0
        self.room = asyncio.Event()  # set when a handshake place frees
        self.waits = 0  # times the listener waited for a place, since the start
        # deep enough for a fleet reconnecting at once to wait there, not in TCP retries (the
        # kernel caps it at net.core.somaxconn; agents wait for their handshake up to 60 s)
        self.backlog = max(1024, 64 * handshakes) if handshakes > 0 else 1024
        self.client_key = client_key
        self.keepalive_interval = keepalive_interval
        self.keepalive_count = keepalive_count
        self._options: asyncssh.SSHClientConnectionOptions | None = None
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen for agents; returns the bound port."""
        self._options = asyncssh.SSHClientConnectionOptions(
            config=None,  # nothing from the machine's ~/.ssh/config
            known_hosts=([], [], []),  # never None: every key goes through the gate
            client_keys=[self.client_key],
            agent_path=None,
            username="easytask",
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=self.keepalive_count,
            encryption_algs=control.LINK_CIPHERS,
            login_timeout=30,
            connect_timeout=30,
        )
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=self.backlog)
        sock.setblocking(False)
        self._sock = sock
        self.port = sock.getsockname()[1]
        self._accepting = asyncio.create_task(self._accept_loop(sock), name="agent-accept")
        return self.port

    @property
    def listening(self) -> bool:
        """Whether agents can connect now."""
        return self._accepting is not None and not self._accepting.done()

    async def _accept_loop(self, sock: socket.socket) -> None:
        """Accept agents' connections while a handshake place is free (a whole fleet
        reconnecting at once is admitted at a steady rate: the rest wait in the kernel's queue,
        not in retries the server would have to close)."""
        loop = asyncio.get_running_loop()
        while True:
            if self.max_handshakes > 0 and self.handshaking >= self.max_handshakes:
                self.waits += 1
                if self.waits == 1 or self.waits % 1000 == 0:
                    log.info(
                        "%d agent handshakes in progress: new agent connections wait in the "
                        "queue until one ends (%d times so far)",
                        self.handshaking,
                        self.waits,
                    )
                while self.handshaking >= self.max_handshakes:
                    self.room.clear()
                    await self.room.wait()
            try:
                conn_sock, addr = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors, or the like: tried again shortly
                log.warning("cannot accept agent connections: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if self.max_links > 0 and self.links >= self.max_links:
                # past the open-file limit the database and the web server would fail to open
                # files: closed at once, its agent retries after its backoff
                conn_sock.close()
                self.over_limit += 1
                if self.over_limit == 1 or self.over_limit % 1000 == 0:
                    log.warning(
                        "the open-file limit (%d) bounds the fleet: %d agent links are open, "
                        "the most it leaves room for; closing new agent connections (%d so "
                        "far). Raise the limit (ulimit -n, systemd LimitNOFILE=) to connect "
                        "more agents",
                        self.open_files,
                        self.max_links,
                        self.over_limit,
                    )
                continue
            client = _AgentClient(self)
            client.counted = client.open = True
            self.handshaking += 1
            self.links += 1
            task = asyncio.create_task(self._connect(client, conn_sock, addr), name="agent-admit")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _connect(
        self, client: _AgentClient, sock: socket.socket, addr: tuple[Any, ...]
    ) -> None:
        """The SSH client's side of one accepted connection (a reverse link), then its hello."""
        try:
            conn = await asyncssh.connect(
                addr[0],
                addr[1],
                sock=sock,
                config=None,
                options=self._options,
                client_factory=lambda: client,
            )
        except Exception as exc:  # a misbehaving peer must not hurt the listener
            client.gone()
            with contextlib.suppress(OSError):
                sock.close()
            log.debug("agent connection from %s failed: %s", addr[0], exc)
            return
        if conn.is_closed():  # its agent gave up meanwhile (it retries)
            client.gone()
            return
        await self._admit(conn, client)

    async def _admit(self, conn: asyncssh.SSHClientConnection, client: _AgentClient) -> None:
        link = AgentLink(
            conn,
            client.name,
            client.fingerprint,
            client.public_key,
            client.addr,
            client.verdict == "trusted",
        )
        client.link = link
        link.keepalive = (self.keepalive_interval, self.keepalive_count)
        problem = ""
        try:
            # on the link's control session, kept open for its heartbeats and later requests
            # (a session less to open and close per admission)
            try:
                hello: Any = await link.request("hello")
            except ConnectionError:  # an agent without control sessions: a session of its own
                hello = await control.request(conn, "hello")
        except Exception as exc:  # a misbehaving peer must not hurt the listener
            problem = f"no valid hello: {exc or type(exc).__name__}"
        else:
            claimed = hello.get("name") if isinstance(hello, dict) else None
            if not isinstance(hello, dict):
                problem = "bad hello: the hello must be an object"
            elif client.name is None or claimed != client.name:
                problem = (
                    f"bad hello: the name in the hello ({claimed!r}) is not the one in the "
                    f"SSH version ({client.name!r})"
                )
        ok = False
        if not problem:
            said = hello.get("features")
            if isinstance(said, list):
                link.features = frozenset(f for f in said if isinstance(f, str))
        if problem:
            self.gate.refuse(client.name, client.fingerprint, client.addr, problem)
        else:
            try:
                ok = await self.gate.admit(link, hello, link.trusted)
            except Exception as exc:  # a failure here must not hurt the listener either
                log.warning(
                    "agent %s at %s could not be admitted: %s", client.name, client.addr, exc
                )
        client.handshake_done()
        if ok:
            link.admitted = True
            if conn.is_closed():
                self.gate.lost(link, None)
        else:
            conn.close()

    async def close(self) -> None:
        """Stop listening."""
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
        if self._sock is not None:
            self._sock.close()
        for task in list(self._tasks):
            task.cancel()
