"""The agent's control channel: JSON requests and replies on the `easytask` subsystem.

`request` opens a session for one request and one reply (the hello, before an agent is
admitted).  `ControlChannel` keeps one session open per link and sends many requests over it,
each with an `id` its reply carries back, so status checks, acknowledgements and cancels cost one
message each way instead of a channel open and close. Once asked (`beats`), the agent also sends
its heartbeats on that session: lines without an `id`, handed to `on_push`. A request without
an `id` (`tell`: spool acknowledgements) gets no reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import asyncssh
from asyncssh.constants import MSG_IGNORE
from asyncssh.packet import String

log = logging.getLogger("easytask.server")

SUBSYSTEM = "easytask"
SESSION_OP = "session"  # the first line of a long-lived control session

# AES-GCM first on agent links: asyncssh keeps one AES-GCM object per key, where for
# chacha20-poly1305 it builds cipher objects for every packet (keepalives of 1,000 idle agents
# cost measurably less CPU). Both are AEAD ciphers; hardware AES makes GCM the cheaper one.
LINK_CIPHERS = (
    "aes256-gcm@openssh.com",
    "aes128-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes128-ctr",
)


def without_padding_ignores(
    conn: asyncssh.SSHClientConnection | asyncssh.SSHServerConnection,
) -> None:
    """Send no SSH_MSG_IGNORE of its own before every packet on this agent link.

    asyncssh puts an empty SSH_MSG_IGNORE before each packet it sends once the link is
    encrypted: RFC 4251 9.3.1's defence for CBC ciphers, whose next IV the previous packet
    gives away. A link negotiates only from `LINK_CIPHERS` (AEAD and counter modes, no CBC),
    where the packet costs an encryption, a send and, on the far side, a decryption and a
    dispatch, and protects nothing. Other packets, and IGNOREs that carry data, go as before;
    both ends drop theirs (either alone halves its own side)."""
    send = conn.send_packet
    empty = String(b"")

    def send_packet(pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype == MSG_IGNORE and args == (empty,):
            return
        send(pkttype, *args, handler=handler)

    conn.send_packet = send_packet  # type: ignore[method-assign]


async def request(
    conn: asyncssh.SSHClientConnection, op: str, timeout: float = 15.0, **args: Any
) -> dict[str, Any]:
    """Send one control request to an agent and return its reply."""
    async with asyncio.timeout(timeout):
        proc = await conn.create_process(subsystem=SUBSYSTEM, encoding="utf-8")
        try:
            proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            proc.stdin.write_eof()
            line = await proc.stdout.readline()
        finally:
            proc.close()
    if not line:
        raise ConnectionError(f"agent gave no answer to {op!r}")
    return _checked(op, json.loads(line))


def _checked(op: str, reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        raise RuntimeError(f"agent refused {op!r}: {reply['error']}")
    return reply


class ControlChannel:
    """Many requests over one control session of a connection; opened on first use."""

    def __init__(self, conn: asyncssh.SSHClientConnection) -> None:
        self.conn = conn
        self._proc: asyncssh.SSHClientProcess[str] | None = None
        self._opening = asyncio.Lock()
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._reader: asyncio.Task[None] | None = None
        self.on_push: Callable[[dict[str, Any]], None] | None = None  # lines without an id

    async def request(self, op: str, timeout: float = 15.0, **args: Any) -> dict[str, Any]:
        """Send one request and wait for its reply (a timeout cancels the wait, and with it the
        reply's future: its id is forgotten)."""
        async with asyncio.timeout(timeout):
            reply = await (await self.send(op, timeout, **args))
        return _checked(op, reply)

    async def send(
        self, op: str, timeout: float = 15.0, **args: Any
    ) -> asyncio.Future[dict[str, Any]]:
        """Send one request and return at once: its reply settles the future (an `error`
        reply too, unchecked); the session's end fails it with ConnectionError."""
        self._next_id += 1
        rid = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        try:
            proc = self._proc
            if proc is None:
                async with asyncio.timeout(timeout):
                    proc = await self._open()
            proc.stdin.write(json.dumps({"id": rid, "op": op, **args}) + "\n")
        except BaseException:
            self._waiting.pop(rid, None)
            raise
        fut.add_done_callback(lambda _: self._waiting.pop(rid, None))
        return fut

    def tell_now(self, op: str, **args: Any) -> bool:
        """Send one request that wants no reply (a line without an `id`: one message, where a
        request and its reply are two) on the session if it is open; False if it is not.
        Whether the agent did it is not known here."""
        proc = self._proc
        if proc is None or proc.is_closing():
            return False
        proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        return True

    async def tell(self, op: str, timeout: float = 15.0, **args: Any) -> None:
        """`tell_now`, opening the session first if needed (raises if it cannot)."""
        async with asyncio.timeout(timeout):
            proc = await self._open()
        proc.stdin.write(json.dumps({"op": op, **args}) + "\n")

    async def _open(self) -> asyncssh.SSHClientProcess[str]:
        async with self._opening:
            if self._proc is None:
                proc = await self.conn.create_process(subsystem=SUBSYSTEM, encoding="utf-8")
                proc.stdin.write(json.dumps({"op": SESSION_OP}) + "\n")
                self._proc = proc
                self._reader = asyncio.create_task(self._read(proc), name="control-reader")
            return self._proc

    async def _read(self, proc: asyncssh.SSHClientProcess[str]) -> None:
        try:
            async for line in proc.stdout:
                try:
                    reply = json.loads(line)
                    if isinstance(reply, dict) and "id" not in reply:
                        self._pushed(reply)
                        continue
                    fut = self._waiting.get(int(reply.pop("id")))
                except (ValueError, KeyError, TypeError):
                    continue
                if fut is not None and not fut.done():
                    fut.set_result(reply)
        except (asyncssh.Error, OSError):
            pass
        finally:
            if self._proc is proc:
                self._proc = None
            proc.close()
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the agent's control session closed"))

    def _pushed(self, message: dict[str, Any]) -> None:
        if self.on_push is None:
            return
        try:
            self.on_push(message)
        except Exception:  # a bad message must not end the session
            log.exception("a message the agent sent could not be handled")

    def close(self) -> None:
        if self._proc is not None:
            self._proc.close()
