"""Fixtures: real servers, agents and sshd on loopback, each in its own temp dir and process group."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import (
    SSHD,
    SSHD_BIN,
    PostgresCluster,
    Proc,
    Procs,
    ServerHandle,
    launch_agent,
    launch_server,
    start_sshd,
)
from tests.support.wheel import build_wheel, install_venv

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


@pytest.fixture(scope="session")
def easytask_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from the tree."""
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def agent_venv(tmp_path_factory: pytest.TempPathFactory, easytask_wheel: Path) -> Path:
    """A fresh venv with an agent's install: `pip install easytask`, no extra."""
    return install_venv(tmp_path_factory.mktemp("agent-venv") / "venv", str(easytask_wheel))


@pytest.fixture(scope="session")
def server_venv(tmp_path_factory: pytest.TempPathFactory, easytask_wheel: Path) -> Path:
    """A fresh venv with a server's install: `pip install 'easytask[server]'`."""
    venv = tmp_path_factory.mktemp("server-venv") / "venv"
    return install_venv(venv, f"{easytask_wheel}[server]")


@pytest.fixture
def procs() -> Iterator[Procs]:
    """Every process a test starts; all are stopped (by process group) at teardown."""
    started = Procs()
    yield started
    started.stop_all()


ServerFactory = Callable[..., ServerHandle]


def server_factory(
    base: Path, procs: Procs, request: pytest.FixtureRequest
) -> tuple[ServerFactory, list[ServerHandle]]:
    """A function starting real `easytask server`s with state dirs under `base`, and the list of
    the handles it made (close them at teardown); see `start_server`."""
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
        state = state_dir or base / f"server{len(handles)}"
        options = [
            "--agents",
            agents,
            "--keepalive",
            keepalive,
            "--keepalive-count",
            keepalive_count,
            "--inventory",
            str(inventory or base / "no-inventory"),
            *(
                extra
                if "--playbooks" in extra
                else (*extra, "--playbooks", str(base / "no-playbooks"))
            ),
        ]
        if TEST_DB == "postgres" and "--db" not in extra:
            if state not in databases:
                databases[state] = request.getfixturevalue("postgres").new_database()
            options += ["--db", databases[state]]
        db_url = next((extra[i + 1] for i, a in enumerate(extra[:-1]) if a == "--db"), None)
        handle = launch_server(procs, state, *options, db_url=db_url or databases.get(state))
        handles.append(handle)
        return handle

    return start, handles


@pytest.fixture
def start_server(
    tmp_path: Path, procs: Procs, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """Start a real `easytask server` with its own state dir on free loopback ports.

    With EASYTASK_TEST_DB=postgres each state dir gets its own fresh PostgreSQL database (kept
    across restarts of a server on that state dir), unless the test passes `--db` itself.
    """
    start, handles = server_factory(tmp_path, procs, request)
    yield start
    for handle in handles:
        handle.close()


@pytest.fixture(scope="module")
def module_procs() -> Iterator[Procs]:
    """`procs` for a whole test module: stopped after its last test."""
    started = Procs()
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def start_module_server(
    tmp_path_factory: pytest.TempPathFactory, module_procs: Procs, request: pytest.FixtureRequest
) -> Iterator[ServerFactory]:
    """`start_server` for a whole test module: its servers live until the module's last test."""
    start, handles = server_factory(tmp_path_factory.mktemp("module"), module_procs, request)
    yield start
    for handle in handles:
        handle.close()


AgentFactory = Callable[..., Proc]


@pytest.fixture
def start_agent(tmp_path: Path, procs: Procs) -> AgentFactory:
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
        options = ("--keepalive", "1", "--backoff-max", "1", *extra)
        return launch_agent(
            procs, server, name, state, *options, enroll=enroll, wait=wait, timeout=40
        )

    return start


@pytest.fixture
def sshd(tmp_path: Path, procs: Procs) -> SSHD:
    """A real sshd on loopback for this test (tests.support.sshd)."""
    if not Path(SSHD_BIN).exists():
        pytest.fail("sshd is missing: `make test` installs openssh-server")
    return start_sshd(tmp_path / "sshd", procs)


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
