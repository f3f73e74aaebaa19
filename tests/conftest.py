"""Fixtures: real servers, agents and sshd on loopback, each in its own temp dir and process group."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import Proc, ServerHandle, easytask_cmd, free_port, wait_until
from tests.pg import PostgresCluster

SSHD_BIN = shutil.which("sshd") or "/usr/sbin/sshd"

# EASYTASK_TEST_DB=postgres: every server a test starts gets its own PostgreSQL database.
TEST_DB = os.environ.get("EASYTASK_TEST_DB", "sqlite")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A real PostgreSQL cluster for the whole session, with a template database at head."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.make_template()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    """Every process a test starts; all are stopped (by process group) at teardown."""
    started: list[Proc] = []
    yield started
    for proc in reversed(started):
        proc.stop()


ServerFactory = Callable[..., ServerHandle]


@pytest.fixture
def start_server(
    tmp_path: Path, procs: list[Proc], request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """Start a real `easytask server` with its own state dir on free loopback ports.

    With EASYTASK_TEST_DB=postgres each state dir gets its own fresh PostgreSQL database (kept
    across restarts of a server on that state dir), unless the test passes `--db` itself.
    """
    handles: list[ServerHandle] = []
    databases: dict[Path, str] = {}

    def start(
        inventory: Path | None = None,
        *extra: str,
        state_dir: Path | None = None,
        keepalive: str = "1",
        keepalive_count: str = "3",
        agents: str = "127.0.0.1:0",
    ) -> ServerHandle:
        state = state_dir or tmp_path / f"server{len(handles)}"
        state.mkdir(parents=True, exist_ok=True)
        info = state / "server.json"
        if info.exists():
            info.unlink()
        args = easytask_cmd(
            "server",
            "--state-dir",
            str(state),
            "--agents",
            agents,
            "--http",
            "127.0.0.1:0",
            "--keepalive",
            keepalive,
            "--keepalive-count",
            keepalive_count,
            "--inventory",
            str(inventory or tmp_path / "no-inventory"),
            *(
                extra
                if "--playbooks" in extra
                else (*extra, "--playbooks", str(tmp_path / "no-playbooks"))
            ),
        )
        if TEST_DB == "postgres" and "--db" not in extra:
            if state not in databases:
                databases[state] = request.getfixturevalue("postgres").new_database()
            args += ["--db", databases[state]]
        proc = Proc(args, state / "server.log")
        procs.append(proc)
        wait_until(lambda: info.exists() or not proc.alive(), timeout=60, what="server start")
        assert proc.alive(), proc.output()
        db_url = next((extra[i + 1] for i, a in enumerate(extra[:-1]) if a == "--db"), None)
        handle = ServerHandle(proc, state, db_url or databases.get(state))
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.close()


AgentFactory = Callable[..., Proc]


@pytest.fixture
def start_agent(tmp_path: Path, procs: list[Proc]) -> AgentFactory:
    """Start a real `easytask agent` process connected to a server."""

    def start(
        server: ServerHandle,
        name: str,
        *extra: str,
        enroll: bool = True,
        state_dir: Path | None = None,
        wait: bool = True,
    ) -> Proc:
        state = state_dir or tmp_path / "agents" / name
        state.mkdir(parents=True, exist_ok=True)
        args = easytask_cmd(
            "agent",
            "--server",
            server.agents_addr,
            "--name",
            name,
            "--state-dir",
            str(state),
            "--keepalive",
            "1",
            "--backoff-max",
            "1",
            *extra,
        )
        if enroll:
            token = server.post("/api/agents/tokens", {"uses": 1, "ttl": "10m"})["token"]
            args += ["--enroll", token]
        proc = Proc(args, state / "agent.log")
        procs.append(proc)
        if wait:
            wait_until(
                lambda: server.agent_status(name) == "online",
                timeout=40,
                what=f"agent {name} online",
            )
        return proc

    return start


class SSHD:
    """A real OpenSSH sshd on a loopback port, with a client key and a known_hosts file."""

    def __init__(self, root: Path, port: int, proc: Proc) -> None:
        self.root = root
        self.port = port
        self.proc = proc
        self.client_key = root / "client_key"
        self.known_hosts = root / "known_hosts"
        self.user = pwd.getpwuid(os.getuid()).pw_name

    def host_vars(self) -> str:
        """INI host-line variables that reach this sshd."""
        return (
            f"ansible_host=127.0.0.1 ansible_port={self.port} ansible_user={self.user} "
            f"ansible_ssh_private_key_file={self.client_key} easytask_connection=ssh "
            f"easytask_known_hosts={self.known_hosts}"
        )


@pytest.fixture
def sshd(tmp_path: Path, procs: list[Proc]) -> SSHD:
    """Start sshd with its own config, host key and authorized key; UsePAM no, StrictModes no."""
    if not Path(SSHD_BIN).exists():
        pytest.fail("sshd is missing: `make test` installs openssh-server")
    root = tmp_path / "sshd"
    root.mkdir()
    home = root / "home"
    home.mkdir()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key")], check=True
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key")], check=True
    )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        textwrap.dedent(f"""\
        Port {port}
        ListenAddress 127.0.0.1
        HostKey {root / "host_key"}
        AuthorizedKeysFile {root / "authorized_keys"}
        PidFile {root / "sshd.pid"}
        UsePAM no
        StrictModes no
        PasswordAuthentication no
        KbdInteractiveAuthentication no
        PubkeyAuthentication yes
        PermitRootLogin yes
        SetEnv HOME={home}
        MaxStartups 200:30:400
        MaxSessions 200
        LogLevel ERROR
        Subsystem sftp internal-sftp
        """)
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = Proc([SSHD_BIN, "-D", "-e", "-f", str(config)], root / "sshd.log")
    procs.append(proc)
    host_pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")

    def listening() -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listening, timeout=10, what="sshd listening")
    return SSHD(root, port, proc)


def write(path: Path, text: str) -> Path:
    """Write a dedented file, creating parent dirs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def write_file() -> Callable[[Path, str], Path]:
    return write


def pytest_configure(config: Any) -> None:
    os.environ.setdefault("NO_COLOR", "1")
