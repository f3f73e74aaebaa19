"""A fleet reconnecting at once: the server holds at most --agents-handshakes connections in
their handshake; no more is accepted meanwhile: the next wait in the kernel's queue (no retries
for the server to close) and are taken as places free."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.conftest import AgentFactory, ServerFactory
from tests.support import Procs, ServerHandle, wait_until


def _connect(addr: str) -> socket.socket:
    host, port = addr.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=20)
    sock.settimeout(20)
    return sock


def test_connections_past_the_handshake_cap_wait_until_a_place_frees(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """Two silent peers hold both handshake places (the server, the SSH client of a reverse
    link, sends them its version); a third is not accepted (nothing sent to it, the log says
    new connections wait) until one of the two is gone, then it gets the version; once both
    are gone, a real agent connects and comes online."""
    server = start_server(None, "--agents-handshakes", "2")
    held = [_connect(server.agents_addr) for _ in range(2)]
    for sock in held:
        assert sock.recv(64).startswith(b"SSH-2.0-")
    extra = _connect(server.agents_addr)
    log = server.state_dir / "server.log"
    wait_until(
        lambda: "2 agent handshakes in progress: new agent connections wait" in log.read_text(),
        timeout=10,
        what="the wait logged",
    )
    extra.setblocking(False)
    with pytest.raises(BlockingIOError):  # not accepted: nothing sent
        extra.recv(64)
    extra.setblocking(True)
    held[0].close()
    assert extra.recv(64).startswith(b"SSH-2.0-")  # taken once a place freed
    extra.close()
    held[1].close()
    start_agent(server, "after")
    assert server.agent_status("after") == "online"


def test_an_agent_keeps_its_place_in_the_queue_past_its_tcp_timeout(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """The one handshake place is held by a silent peer until the server's 30 s login timeout
    drops it, longer than an agent gives its TCP connection (15 s): a real agent queued behind
    it waits for its handshake and comes online without a failed try."""
    server = start_server(None, "--agents-handshakes", "1")
    held = _connect(server.agents_addr)
    assert held.recv(64).startswith(b"SSH-2.0-")
    agent = start_agent(server, "queued")  # returns once the server has it online
    assert "cannot connect" not in agent.output()
    held.close()


def _server_with_open_files(tmp_path: Path, procs: Procs, soft: int, hard: int) -> ServerHandle:
    """A real server started with this open-file limit (soft, hard), as a service manager or
    `ulimit -n` would give it."""
    state = tmp_path / "server"
    state.mkdir()
    (tmp_path / "inventory.ini").write_text("")
    launcher = (
        "import os, resource, sys; "
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard})); "
        "os.execv(sys.executable, [sys.executable, '-m', 'easytask', *sys.argv[1:]])"
    )
    args = [sys.executable, "-c", launcher, "server", "--state-dir", str(state)]
    args += ["--http", "127.0.0.1:0", "--agents", "127.0.0.1:0", "--agents-handshakes", "0"]
    args += ["--inventory", str(tmp_path / "inventory.ini")]
    proc = procs.start(args, state / "server.log")
    info = state / "server.json"
    wait_until(lambda: info.exists() or not proc.alive(), timeout=60, what="server start")
    assert proc.alive(), proc.output()
    return ServerHandle(proc, state)


def _soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.sqlite
def test_the_server_raises_its_open_file_limit_to_the_hard_limit(
    tmp_path: Path, procs: Procs
) -> None:
    """Each agent link holds a descriptor: started with a soft limit below the hard one, the
    server raises it and says how many links it leaves room for."""
    server = _server_with_open_files(tmp_path, procs, 300, 2000)
    try:
        assert _soft_open_files(server.proc.pid) == 2000
        log = server.state_dir / "server.log"
        wait_until(
            lambda: "open-file limit 2000: room for 1744 agent links" in log.read_text(),
            timeout=10,
            what="the limit logged",
        )
    finally:
        server.close()


@pytest.mark.sqlite
def test_agent_links_past_the_open_file_limit_are_closed_and_the_log_says_so(
    tmp_path: Path, procs: Procs
) -> None:
    """With a hard limit of 300 the server keeps room for 150 agent links: the 151st
    connection is closed at once (not an EMFILE in the database or the web server), the log
    says the limit bounds the fleet, and the server goes on answering."""
    server = _server_with_open_files(tmp_path, procs, 300, 300)
    held = []
    try:
        for _ in range(150):
            held.append(_connect(server.agents_addr))
        for sock in held:
            assert sock.recv(64).startswith(b"SSH-2.0-")
        extra = _connect(server.agents_addr)
        assert extra.recv(64) == b""  # closed before the version exchange
        extra.close()
        log = server.state_dir / "server.log"
        wait_until(
            lambda: (
                "the open-file limit (300) bounds the fleet: 150 agent links" in log.read_text()
            ),
            timeout=10,
            what="the bound logged",
        )
        assert server.get("/api/agents")["agents"] == []
        for sock in held[:10]:
            sock.close()
        # room again: a new connection gets the server's version
        wait_until(
            lambda: _version_or_none(server.agents_addr),
            timeout=20,
            what="a connection admitted again",
        )
    finally:
        for sock in held:
            sock.close()
        server.close()


def _version_or_none(addr: str) -> bool:
    sock = _connect(addr)
    try:
        return sock.recv(64).startswith(b"SSH-2.0-")
    finally:
        sock.close()
