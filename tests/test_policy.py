"""Agent-local policy: run-as user, command allowlist, no file transfers, slot cap.

The agent enforces these itself: the last test plays a server that ignores the agent's limits.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import Proc, easytask_cmd, free_port, wait_until

USER = "etrunas"


@pytest.fixture(scope="module")
def run_as_user() -> Iterator[pwd.struct_passwd]:
    """A system account commands can run as (created for these tests when missing)."""
    if os.geteuid() != 0:
        pytest.skip("running commands as another user needs root")
    created = False
    try:
        entry = pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/sh", USER], check=True)
        created = True
        entry = pwd.getpwnam(USER)
    yield entry
    if created:
        subprocess.run(["userdel", USER], check=False)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory everybody may write, outside root's private temp dirs."""
    path = Path(tempfile.mkdtemp(prefix="easytask-policy-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _run(server, pattern: str, command: str) -> dict:  # type: ignore[no-untyped-def]
    job = server.submit(pattern, command)
    data = server.wait_job(job["job"]["id"], timeout=60)
    (run,) = data["runs"]
    run["output"] = [ln["text"] for ln in server.log_lines(run["id"])]
    return dict(run)


def test_run_as_runs_commands_and_file_transfers_as_that_user(
    start_server: ServerFactory,
    start_agent: AgentFactory,
    run_as_user: pwd.struct_passwd,
    shared_dir: Path,
) -> None:
    """--run-as: commands run as the user; copies are written as the user or fail clearly."""
    server = start_server(None)
    start_agent(server, "runas1", "--run-as", USER)
    run = _run(server, "runas1", 'id -un; echo "home=$HOME"')
    assert run["state"] == "success", run
    assert run["output"][0] == USER
    src = write(shared_dir / "src.txt", "hello\n")
    src.chmod(0o644)
    dest = shared_dir / "out.txt"
    done = server.cli("copy", "runas1", str(src), str(dest), "--format", "json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert dest.read_text() == "hello\n"
    assert dest.stat().st_uid == run_as_user.pw_uid  # written by the user, not by root
    locked = shared_dir / "locked"
    locked.mkdir(mode=0o755)  # root's: the user may not write here
    refused = server.cli("copy", "runas1", str(src), str(locked / "x.txt"), "--format", "json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (result,) = json.loads(refused.stdout)["runs"]
    assert result["state"] == "failed"
    assert "permission denied" in result["reason"].lower(), result
    assert not (locked / "x.txt").exists()


def test_allowlist_refuses_other_commands_and_shell_syntax(
    start_server: ServerFactory, start_agent: AgentFactory, shared_dir: Path
) -> None:
    """--allow: matching commands run; anything else is refused by the agent, with the reason."""
    server = start_server(None)
    start_agent(server, "allow1", "--allow", "echo *", "--allow", "uptime")
    ok = _run(server, "allow1", "echo 'hello world'")
    assert ok["state"] == "success" and ok["output"] == ["hello world"]
    marker = shared_dir / "touched"
    sneaky = _run(server, "allow1", f"echo hi; touch {marker}")
    assert sneaky["state"] == "failed"
    assert sneaky["reason"].startswith("refused by the agent: shell syntax (';')"), sneaky
    assert not marker.exists()
    (agent,) = [a for a in server.get("/api/agents")["agents"] if a["name"] == "allow1"]
    assert agent["facts"]["policy"]["allow"] == ["echo *", "uptime"]
    other = _run(server, "allow1", "id")
    assert other["state"] == "failed"
    assert (
        other["reason"] == "refused by the agent: 'id' is not in this agent's allowlist (--allow)"
    )
    assert any("refused" in line for line in other["output"])  # shown with the run's output
    expansion = _run(server, "allow1", "echo $(id)")
    assert expansion["state"] == "failed" and "shell syntax" in expansion["reason"]


def test_no_files_refuses_transfers(
    start_server: ServerFactory, start_agent: AgentFactory, shared_dir: Path
) -> None:
    """--no-files: copy fails with the reason; commands still run."""
    server = start_server(None)
    start_agent(server, "nofiles1", "--no-files")
    src = write(shared_dir / "f.txt", "x\n")
    result = server.cli("copy", "nofiles1", str(src), str(shared_dir / "g.txt"), "--format", "json")
    assert result.returncode == 1, result.stdout + result.stderr
    (run,) = json.loads(result.stdout)["runs"]
    assert "file transfers are off on this agent (--no-files)" in run["reason"], run
    assert not (shared_dir / "g.txt").exists()
    assert _run(server, "nofiles1", "echo ok")["state"] == "success"


def test_agent_enforces_its_limits_against_a_rogue_server(tmp_path: Path) -> None:
    """A server that ignores the agent's slots and allowlist still gets refused by the agent."""
    port = free_port()
    marker = tmp_path / "rogue-was-here"
    agent = Proc(
        easytask_cmd(
            "agent",
            "--server",
            f"127.0.0.1:{port}",
            "--name",
            "victim1",
            "--state-dir",
            str(tmp_path / "agent"),
            "--slots",
            "1",
            "--allow",
            "sleep *",
            "--allow",
            "echo *",
        ),
        tmp_path / "agent.log",
    )

    async def rogue() -> tuple[asyncssh.SSHCompletedProcess, ...]:
        accepted: asyncio.Queue[asyncssh.SSHClientConnection] = asyncio.Queue()
        acceptor = await asyncssh.listen_reverse(
            "127.0.0.1",
            port,
            known_hosts=None,
            client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            username="easytask",
            acceptor=accepted.put_nowait,
        )
        try:
            conn = await asyncio.wait_for(accepted.get(), 30)
            long = asyncio.create_task(conn.run("sleep 3", env={"EASYTASK_RUN_ID": "1"}))
            await asyncio.sleep(1.0)  # the first run holds the only slot
            second = await conn.run("echo two", env={"EASYTASK_RUN_ID": "2"})
            outside = await conn.run(f"touch {marker}", env={"EASYTASK_RUN_ID": "3"})
            first = await long
            conn.close()
            return first, second, outside
        finally:
            acceptor.close()

    try:
        first, second, outside = asyncio.run(rogue())
    finally:
        agent.stop()
    assert first.exit_status == 0
    for refused, why in ((second, "all 1 slots are in use"), (outside, "not in this agent's")):
        assert refused.exit_signal is not None
        name, _core, msg, _lang = refused.exit_signal
        assert name == "stats@easytask"
        assert why in json.loads(msg)["refused"]
    assert not marker.exists()
    wait_until(lambda: "refused a run" in (tmp_path / "agent.log").read_text(), timeout=10)
