"""The agent's side of its link's socket: what asyncssh writes in one turn goes out in one send."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

from easytask.agent.link import BatchedWrites, Dialled


class Recorder(asyncio.Protocol):
    """Stands where asyncssh's connection stands: records what the transport brings."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = b""
        self.lost: list[Exception | None] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


def _peer_reads(peer: socket.socket) -> bytes:
    """What the other end can read now (nothing waited for)."""
    try:
        return peer.recv(65536)
    except BlockingIOError:
        return b""


async def _dialled() -> tuple[Recorder, BatchedWrites, socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    sock = socket.create_connection(listener.getsockname())
    sock.setblocking(False)
    peer, _ = listener.accept()
    listener.close()
    peer.setblocking(False)
    conn = Recorder()
    transport, got = await Dialled(sock).create_connection(lambda: conn, "", 0)
    assert got is conn and conn.transport is transport
    return conn, transport, sock, peer


async def _arrives(peer: socket.socket, want: bytes) -> bytes:
    got = b""
    deadline = time.monotonic() + 10
    while len(got) < len(want) and time.monotonic() < deadline:
        got += _peer_reads(peer)
        await asyncio.sleep(0.01)
    return got


def test_writes_of_one_turn_go_out_together_and_in_order() -> None:
    """Three packets written in one turn of the loop are sent at its end, as one piece; what
    comes in reaches the connection as it came."""

    async def scenario() -> None:
        conn, transport, sock, peer = await _dialled()
        try:
            transport.write(b"ignore;")
            transport.write(bytearray(b"packet;"))
            transport.write(memoryview(b"more"))
            assert _peer_reads(peer) == b""  # nothing sent yet: the turn is not over
            assert transport.get_write_buffer_size() == 18
            await asyncio.sleep(0)
            assert await _arrives(peer, b"ignore;packet;more") == b"ignore;packet;more"
            peer.send(b"from the server")
            deadline = time.monotonic() + 10
            while conn.received != b"from the server" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert conn.received == b"from the server"
            assert transport.get_extra_info("peername") == peer.getsockname()
        finally:
            transport.close()
            peer.close()

    asyncio.run(scenario())


def test_close_and_abort_hand_on_what_was_written_first() -> None:
    """A close, or an abort, right after a write still sends that write, as an unbatched
    transport would have (asyncssh writes its disconnect message, then aborts)."""

    async def scenario(end: str) -> bytes:
        conn, transport, sock, peer = await _dialled()
        try:
            transport.write(b"goodbye")
            getattr(transport, end)()
            assert transport.is_closing()
            got = await _arrives(peer, b"goodbye")
            deadline = time.monotonic() + 10
            while not conn.lost and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert conn.lost == [None]
            return got
        finally:
            peer.close()

    assert asyncio.run(scenario("close")) == b"goodbye"
    assert asyncio.run(scenario("abort")) == b"goodbye"
