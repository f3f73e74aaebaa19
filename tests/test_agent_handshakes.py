"""A fleet reconnecting at once: the server holds at most --agents-handshakes connections in
their handshake; one more is closed before any key exchange and its agent retries later."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.conftest import AgentFactory, ServerFactory
from tests.support import wait_until


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.settimeout(20)
    return sock


def test_connections_past_the_handshake_cap_are_closed_before_the_key_exchange(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """Two silent peers hold both handshake places (the server, the SSH client of a reverse
    link, sends them its version); a third is closed with nothing sent, and the log says why;
    once the two are gone, a real agent connects and comes online."""
    server = start_server(None, "--agents-handshakes", "2")
    held = [_connect(server.agents_addr) for _ in range(2)]
    for sock in held:
        assert sock.recv(64).startswith(b"SSH-2.0-")
    extra = _connect(server.agents_addr)
    assert extra.recv(64) == b""  # closed before the version exchange
    extra.close()
    log = server.state_dir / "server.log"
    wait_until(
        lambda: "2 agent handshakes in progress: closing new agent connections" in log.read_text(),
        timeout=10,
        what="the shedding logged",
    )
    for sock in held:
        sock.close()
    start_agent(server, "after")
    assert server.agent_status("after") == "online"
