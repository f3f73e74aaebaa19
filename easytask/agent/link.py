"""An agent's link to its servers: dialling one, the wait before trying again (exponential
backoff with jitter), its keepalives."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from typing import Any, cast

# seconds: the longest wait between tries while every server refuses the connection (none is
# listening: a try costs a server nothing), so a fleet is back soon after its server restarts
REFUSED_BACKOFF_MAX = 5.0
# seconds: the most a TCP connection to a server may take (one that does not answer is left for
# the next on the list), and then the SSH handshake: a server admitting a whole fleet at once
# keeps the next connections in its queue until a handshake place is free (see AgentListener)
CONNECT_TIMEOUT = 15.0
HANDSHAKE_WAIT = 60.0


class NoServerListening(OSError):
    """Every server refused the connection: none of them is listening now."""


async def open_tcp(host: str, port: int) -> socket.socket:
    """A TCP connection to a server, within CONNECT_TIMEOUT (each of its addresses in turn)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    error: OSError = OSError(f"no address for {host}")
    async with asyncio.timeout(CONNECT_TIMEOUT):
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:  # the timeout, or the agent stopping
                sock.close()
                raise
            return sock
    raise error


def no_server(failures: list[tuple[str, Exception]]) -> OSError:
    """The error of a try that reached no server (`failures`: each server's address and
    error): `NoServerListening` when every one refused the connection."""
    text = "; ".join(f"{where}: {str(exc) or type(exc).__name__}" for where, exc in failures)
    if failures and all(isinstance(exc, ConnectionRefusedError) for _, exc in failures):
        return NoServerListening(text)
    return OSError(text)


class Backoff:
    """The wait before each try: doubling from `least` up to `most` (up to
    `REFUSED_BACKOFF_MAX` after a try no server listened to), times 0.5 to 1.5."""

    def __init__(self, least: float, most: float) -> None:
        self.least = least
        self.most = most
        self.current = least

    def reset(self) -> None:
        """After a link that lasted: the next wait is the shortest again."""
        self.current = self.least

    def next_delay(self, refused: bool) -> float:
        """The wait before the next try; `refused`: the last one found no server listening."""
        longest = min(self.most, REFUSED_BACKOFF_MAX) if refused else self.most
        self.current = min(self.current, longest)
        delay = self.current * (0.5 + random.random())
        self.current = min(self.current * 2, longest)
        return delay


KEEPALIVE_PER_BEAT = 1.5  # keepalives at most every 1.5 heartbeats when paced (`keepalive_for`)


def keepalive_for(asked: float, heartbeat: float, interval: float, count: int) -> tuple[float, int]:
    """The keepalive (interval, count) of a link whose server asked for heartbeats every
    `asked` s, for an agent of --heartbeat, --keepalive and --keepalive-count. A large fleet's
    server asks for a slower pace than the agent's own: keepalives (a request and a reply each;
    667 a second at 10,000 agents every 15 s) then come every 1.5 heartbeats at most, with
    fewer missed ones allowed: a silent server is noticed within two such intervals or
    interval x count, the longer (one that stops or dies closes its connections: noticed at once)."""
    slow = KEEPALIVE_PER_BEAT * asked
    if asked <= heartbeat or interval <= 0 or slow <= interval:
        return interval, count
    return slow, max(1, int(interval * count // slow))


class Dialled:
    """A connected socket handed to asyncssh as its `tunnel`, the link's writes batched.

    asyncssh writes every SSH packet to its transport at once, and an SSH_MSG_IGNORE before
    each: a run's session (its channel's confirmation, the exec request's reply, the exit
    status, its end and close) was about ten sends to the socket, each a system call and, on
    the other side, a wake-up.  Here the packets written in one turn of the event loop go out
    in one send at its end (`BatchedWrites`): the same bytes in the same order.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def create_connection(
        self, session_factory: Callable[[], Any], remote_host: str, remote_port: int
    ) -> tuple[BatchedWrites, Any]:
        conn = session_factory()
        relay = _Relay(conn)
        await asyncio.get_running_loop().create_connection(lambda: relay, sock=self.sock)
        assert relay.transport is not None
        return relay.transport, conn


class BatchedWrites(asyncio.Transport):
    """A transport whose writes of one event-loop turn reach the one below in one write."""

    def __init__(self, inner: asyncio.Transport) -> None:
        super().__init__()
        self._inner = inner
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def flush(self) -> None:
        """What was written so far goes to the transport below now."""
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._inner.write(data)

    def close(self) -> None:
        self.flush()
        self._inner.close()

    def abort(self) -> None:
        # as without the batching: what was written was handed on before the abort
        self.flush()
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(map(len, self._pending))

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._inner.pause_reading()

    def resume_reading(self) -> None:
        self._inner.resume_reading()

    def is_reading(self) -> bool:
        return self._inner.is_reading()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._inner.write_eof()


class _Relay(asyncio.Protocol):
    """The socket's protocol: hands the SSH connection a `BatchedWrites` and what comes in."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.transport: BatchedWrites | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = BatchedWrites(cast(asyncio.Transport, transport))
        self.conn.connection_made(self.transport)

    def data_received(self, data: bytes) -> None:
        self.conn.data_received(data)

    def eof_received(self) -> bool | None:
        return cast(bool | None, self.conn.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.connection_lost(exc)

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()
