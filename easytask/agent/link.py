"""An agent's link to its servers: dialling them (the next one too when the first is slow to
answer), the wait before trying again (exponential backoff with jitter), its keepalives."""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

log = logging.getLogger("easytask.agent")
T = TypeVar("T")

# seconds: the longest wait between tries while every server refuses the connection (none is
# listening: a try costs a server nothing), so a fleet is back soon after its server restarts
REFUSED_BACKOFF_MAX = 5.0
# seconds: the most a TCP connection to a server may take (one that does not answer is left for
# the next on the list), and then the SSH handshake: a server admitting a whole fleet at once
# keeps the next connections in its queue until a handshake place is free (see AgentListener)
CONNECT_TIMEOUT = 15.0
HANDSHAKE_WAIT = 60.0
# seconds without a handshake from a server before the next one listed is dialled too (a server
# that hangs keeps its TCP port open: its agents would otherwise wait HANDSHAKE_WAIT for it)
HEDGE_AFTER = 5.0


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


async def first_to_answer(
    dials: list[tuple[str, Callable[[], Awaitable[T]]]],
    close: Callable[[T], Any],
    failed: tuple[type[Exception], ...] = (OSError, TimeoutError),
    hedge_after: float = HEDGE_AFTER,
) -> tuple[str, T]:
    """Dial servers in the order listed (`dials`: each one's address and its dial) and return
    the first that answers, with its address. The next one is dialled as soon as the last
    fails, or alongside it when it has not answered within `hedge_after` seconds; the
    first to answer wins and the others are cancelled (one that answered too is `close`d).
    A dial raising one of `failed` did not answer; `no_server(...)` when none answered."""
    waiting = list(dials)
    dialling: dict[asyncio.Task[T], str] = {}
    failures: list[tuple[str, Exception]] = []
    try:
        while waiting or dialling:
            if waiting:
                where, dial = waiting.pop(0)
                if dialling:
                    log.info(
                        "no answer from %s within %gs: dialling %s too",
                        ", ".join(dialling.values()),
                        hedge_after,
                        where,
                    )
                dialling[asyncio.ensure_future(dial())] = where
            while dialling:
                done, _ = await asyncio.wait(
                    dialling,
                    timeout=hedge_after if waiting else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    break  # none answered in time: the next is dialled alongside
                for task in done:
                    where = dialling.pop(task)
                    exc = task.exception()
                    if exc is None:
                        return where, task.result()
                    if not isinstance(exc, failed):
                        raise exc
                    failures.append((where, exc))
                if waiting:
                    break  # one failed: the next is dialled now
        raise no_server(failures)
    finally:
        for task in dialling:
            task.cancel()
        for other in await asyncio.gather(*dialling, return_exceptions=True):
            if not isinstance(other, BaseException):
                close(other)  # answered as well, after the winner


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
