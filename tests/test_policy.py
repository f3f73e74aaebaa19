"""Agent-local policy: run-as user, command allowlist, file transfers (off, confined), slot cap.

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

from easytask.agent import sftp
from easytask.agent.policy import PolicyError, make_policy
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


def _rogue_sftp(port: int, attempts: list[tuple[str, str]]) -> list[str]:
    """Play a scheduler that writes files over SFTP whatever the agent's policy; the errors."""

    async def rogue() -> list[str]:
        accepted: asyncio.Queue[asyncssh.SSHClientConnection] = asyncio.Queue()
        acceptor = await asyncssh.listen_reverse(
            "127.0.0.1",
            port,
            known_hosts=None,
            client_keys=[asyncssh.generate_private_key("ssh-ed25519")],
            username="easytask",
            acceptor=accepted.put_nowait,
        )
        errors = []
        try:
            conn = await asyncio.wait_for(accepted.get(), 30)
            async with conn.start_sftp_client() as sftp:
                for path, data in attempts:
                    try:
                        async with sftp.open(path, "w") as f:
                            await f.write(data)
                        errors.append("")
                    except asyncssh.SFTPError as exc:
                        errors.append(str(exc.reason))
            conn.close()
        finally:
            acceptor.close()
        return errors

    return asyncio.run(rogue())


def _agent(tmp_path: Path, port: int, name: str, *extra: str) -> Proc:
    args = ["--server", f"127.0.0.1:{port}", "--name", name, "--state-dir", str(tmp_path / name)]
    return Proc(easytask_cmd("agent", *args, *extra), tmp_path / f"{name}.log")


def test_allowlist_turns_file_transfers_off_against_a_rogue_server(tmp_path: Path) -> None:
    """--allow without --file-dir: SFTP cannot plant an authorized_keys (or any) file."""
    port = free_port()
    keys = tmp_path / "home" / ".ssh" / "authorized_keys"
    keys.parent.mkdir(parents=True)
    agent = _agent(tmp_path, port, "victim2", "--allow", "echo *")
    try:
        (error,) = _rogue_sftp(port, [(str(keys), "ssh-ed25519 AAAA rogue\n")])
    finally:
        agent.stop()
    assert "--allow" in error and "--file-dir" in error, error
    assert not keys.exists()


def test_file_dir_confines_transfers_against_a_rogue_server(tmp_path: Path) -> None:
    """--file-dir D: writes inside D work; D/../x, a symlink out of D and other places do not."""
    port = free_port()
    allowed = tmp_path / "drop"
    (allowed / "sub").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (allowed / "out").symlink_to(outside)
    agent = _agent(tmp_path, port, "victim3", "--allow", "echo *", "--file-dir", str(allowed))
    attempts = [
        (str(allowed / "sub" / "ok.txt"), "fine\n"),
        (f"{allowed}/../escaped.txt", "no\n"),
        (str(allowed / "out" / "via-link.txt"), "no\n"),
        (str(outside / "direct.txt"), "no\n"),
    ]
    try:
        errors = _rogue_sftp(port, attempts)
    finally:
        agent.stop()
    assert errors[0] == "", errors
    assert (allowed / "sub" / "ok.txt").read_text() == "fine\n"
    for error in errors[1:]:
        assert "outside the directories file transfers may touch" in error, errors
    assert sorted(p.name for p in tmp_path.rglob("*.txt")) == ["ok.txt"]


def test_file_dir_with_a_real_server(
    start_server: ServerFactory, start_agent: AgentFactory, shared_dir: Path
) -> None:
    """With --allow and --file-dir, copy and fetch work inside the directory only; the agent
    reports both limits; --allow alone refuses copy and fetch with the reason."""
    server = start_server(None)
    drop = shared_dir / "drop"
    drop.mkdir()
    start_agent(server, "fdir1", "--allow", "echo *", "--file-dir", str(drop))
    start_agent(server, "fdir2", "--allow", "echo *")
    agents = {a["name"]: a for a in server.get("/api/agents")["agents"]}
    assert agents["fdir1"]["facts"]["policy"]["files"] is True
    assert agents["fdir1"]["facts"]["policy"]["file_dirs"] == [str(drop.resolve())]
    assert agents["fdir2"]["facts"]["policy"]["files"] is False
    src = write(shared_dir / "src.txt", "payload\n")
    ok = server.cli("copy", "fdir1", str(src), str(drop / "in" / "a.txt"), "--format", "json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (drop / "in" / "a.txt").read_text() == "payload\n"
    for dest in (f"{drop}/../b.txt", str(shared_dir / "c.txt")):
        refused = server.cli("copy", "fdir1", str(src), dest, "--format", "json")
        assert refused.returncode == 1, refused.stdout + refused.stderr
        (run,) = json.loads(refused.stdout)["runs"]
        assert "outside the directories file transfers may touch" in run["reason"], run
    fetched = shared_dir / "fetched"
    got = server.cli("fetch", "fdir1", str(drop / "in" / "a.txt"), str(fetched))
    assert got.returncode == 0, got.stdout + got.stderr
    assert (fetched / "fdir1" / "a.txt").read_text() == "payload\n"
    secret = write(shared_dir / "secret.txt", "secret\n")
    denied = server.cli("fetch", "fdir1", str(secret), str(fetched))
    assert denied.returncode == 1 and "fetch failed" in denied.stdout, denied.stdout
    for args in (("copy", "fdir2", str(src), str(drop / "d.txt")), ("fetch", "fdir2", str(src))):
        off = server.cli(*args, *(() if args[0] == "copy" else (str(fetched),)))
        assert off.returncode == 1, off.stdout + off.stderr
        assert "--file-dir" in off.stdout, off.stdout
    assert sorted(p.name for p in shared_dir.rglob("*.txt")) == [
        "a.txt",
        "a.txt",
        "secret.txt",
        "src.txt",
    ]


def test_policy_file_dirs(tmp_path: Path) -> None:
    """--file-dir is checked and resolved; the SFTP server each combination of options gets."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(PolicyError, match="no such directory"):
        make_policy(file_dirs=[str(tmp_path / "absent")])
    plain = make_policy()
    assert sftp.sftp_factory(plain) is True and plain.describe()["files"] is True
    confined = make_policy(file_dirs=[str(tmp_path / "link")])
    assert confined.file_dirs == (str(real),) and confined.files_refusal() is None
    assert confined.describe()["file_dirs"] == [str(real)]
    assert sftp.sftp_factory(confined) is not True  # confined even without an allowlist
    allow_only = make_policy(allow=["echo *"])
    assert "--file-dir" in (allow_only.files_refusal() or "")
    assert allow_only.describe()["files"] is False
    assert make_policy(files=False, file_dirs=[str(real)]).describe()["files"] is False
    dirs = (str(real),)
    assert sftp.confine(str(real / "a" / "b").encode(), dirs) == str(real / "a" / "b").encode()
    assert sftp.confine(str(tmp_path / "link" / "x").encode(), dirs) == str(real / "x").encode()
    for bad in (f"{real}/../x", str(tmp_path), f"{real}-sibling/x", "/etc/passwd"):
        with pytest.raises(asyncssh.SFTPPermissionDenied):
            sftp.confine(bad.encode(), dirs)


def test_file_dir_with_run_as(
    start_server: ServerFactory,
    start_agent: AgentFactory,
    run_as_user: pwd.struct_passwd,
    shared_dir: Path,
) -> None:
    """--run-as and --file-dir together: copies land inside the directory, as the user; a
    destination the user could write outside it is refused all the same."""
    server = start_server(None)
    drop = shared_dir / "drop"
    drop.mkdir(mode=0o777)
    drop.chmod(0o777)
    start_agent(server, "fdir3", "--run-as", USER, "--file-dir", str(drop))
    src = write(shared_dir / "src.txt", "as user\n")
    src.chmod(0o644)
    ok = server.cli("copy", "fdir3", str(src), str(drop / "a.txt"), "--format", "json")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert (drop / "a.txt").stat().st_uid == run_as_user.pw_uid
    refused = server.cli("copy", "fdir3", str(src), str(shared_dir / "b.txt"), "--format", "json")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    (run,) = json.loads(refused.stdout)["runs"]
    assert "outside the directories file transfers may touch" in run["reason"], run
    assert not (shared_dir / "b.txt").exists()
