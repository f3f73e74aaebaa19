"""`easytask agents bootstrap`: the server turns agentless hosts into agent hosts over their own
SSH. Real parts: a loopback sshd (two inventory aliases of it, each with its own prefix, so
each is its own agent), the project's wheel sent over SFTP and pip-installed into a venv on the
"host", the agent started detached (systemd is not PID 1 here), a real server."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from easytask.inventory import load_inventory
from easytask.plan import plan_adhoc
from easytask.transport.bootstrap import HostPlan, host_files, start_script
from tests.conftest import ServerFactory, write
from tests.support import Procs, user_client, wait_until
from tests.support.procs import free_port
from tests.support.sshd import SSHD, start_sshd
from tests.test_light_agent import parse_env_file, parse_unit, values

TOKEN = re.compile(rb"et_enroll_[A-Za-z0-9_-]+")


def host_pip_config(home: Path) -> None:
    """The "host's" pip reaches the machine's configured package index, as a real host's pip
    reaches PyPI: its user config in the sshd's HOME holds this machine's pip settings."""
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    settings: dict[str, str] = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name and value:
            settings[name] = value.strip().strip("'\"")
    conf = home / ".config" / "pip" / "pip.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))


def _stop_agents(root: Path) -> None:
    """The detached agents the bootstraps started (their pid files), stopped."""
    for pidfile in root.glob("*/state/agent.pid"):
        try:
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
        except (ValueError, ProcessLookupError):
            pass


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "hosts"
    root.mkdir()
    yield root
    _stop_agents(root)


def _online(server: object, name: str) -> bool:
    agents = server.get("/api/agents")["agents"]  # type: ignore[attr-defined]
    return any(a["name"] == name and a["status"] == "online" for a in agents)


@pytest.mark.slow
def test_bootstrap_turns_agentless_hosts_into_agents(
    tmp_path: Path,
    procs: Procs,
    start_server: ServerFactory,
    easytask_wheel: Path,
    hosts: Path,
) -> None:
    """One command installs, enrols and starts an agent on each host (two aliases of one sshd,
    each with its own prefix), with live per-host progress; the host is then reached through
    its agent although the inventory says ssh; a second bootstrap changes nothing."""
    sshd = start_sshd(tmp_path / "sshd", procs)
    host_pip_config(sshd.root / "home")
    inventory = write(
        tmp_path / "inventory",
        f"""\
        [web]
        boot1 {sshd.host_vars()} easytask_agent_prefix={hosts / "boot1"}
        boot2 {sshd.host_vars()} easytask_agent_prefix={hosts / "boot2"}
        """,
    )
    server = start_server(inventory)
    (server.state_dir / "wheels").mkdir()
    shutil.copy(easytask_wheel, server.state_dir / "wheels")  # the server's own wheel

    # bad input: 400 naming what is wrong, nothing audited, nothing started
    before = len(server.get("/api/audit", limit=1000)["events"])
    for body, message in (
        ({"pattern": "web", "prefix": "opt/x"}, "prefix 'opt/x'"),
        ({"pattern": "web", "index_url": "ftp://x"}, "index_url 'ftp://x'"),
        ({"pattern": "web", "server": "h"}, "server 'h'"),
        ({"pattern": ""}, "pattern"),
    ):
        answer = server.http.post("/api/agents/bootstrap", json=body)
        assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert len(server.get("/api/audit", limit=1000)["events"]) == before

    done = server.cli(
        "agents", "bootstrap", "web", "--server", server.agents_addr, "--timeout", "60",
        timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("boot1", "boot2"):
        prefix = hosts / name
        steps = [ln.split(None, 1)[1] for ln in done.stdout.splitlines() if ln.startswith(name)]
        assert steps[0] == "connected over SSH", steps
        assert "the agent will run as a detached process" in steps[1]
        assert steps[2].startswith(f"installed into {prefix / 'venv'} from the server's wheel")
        assert steps[3] == f"one-use enrolment token written to {prefix / 'state/enroll'} (0600)"
        assert steps[4].startswith(f"started: detached process ({prefix / 'agent.sh'}")
        assert steps[-1].startswith("online and accepted")
        assert _online(server, name)
        # the token is spent and its file gone; nothing the bootstrap left holds it
        assert not (prefix / "state" / "enroll").exists()
        assert (prefix / "state").stat().st_mode & 0o777 == 0o700
        for path in [prefix / "agent.sh", *(prefix / "state").iterdir()]:
            if path.is_file():
                assert not TOKEN.search(path.read_bytes()), path
        pid = int((prefix / "state" / "agent.pid").read_text())
        assert f"--name\0{name}\0".encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert "bootstrap " in done.stdout and "2 new agent(s), 0 already an agent, 0 failed" in (
        done.stdout
    )
    agents = {a["name"]: a for a in server.get("/api/agents")["agents"]}
    for name in ("boot1", "boot2"):
        assert agents[name]["state"] == "accepted"
        assert agents[name]["labels"] == ["web"] and agents[name]["pending"] == []
    events = server.get("/api/audit", limit=1000)["events"]
    (boot,) = [e for e in events if e["action"] == "agent.bootstrap"]
    assert boot["detail"]["hosts"] == ["boot1", "boot2"]
    tokens = [e for e in events if e["action"] == "agent.token"]
    assert sorted(e["detail"]["agent"] for e in tokens) == ["boot1", "boot2"]
    assert all(e["detail"]["uses"] == 1 for e in tokens)

    # the inventory still says easytask_connection=ssh: the online agent of the name wins
    run = server.cli("run", "boot1", "-a", "echo hi", timeout=60)
    assert run.returncode == 0 and "hi" in run.stdout, run.stdout + run.stderr
    (ran,) = server.get("/api/runs", host="boot1")["runs"]
    assert (ran["connection"], ran["agent"], ran["state"]) == ("agent", "boot1", "success")
    lines = server.get(f"/api/runs/{ran['id']}/log")["lines"]
    assert [ln["text"] for ln in lines if ln["stream"] == "stdout"] == ["hi"]

    # again: a no-op on hosts already done
    pids = {n: (hosts / n / "state" / "agent.pid").read_text() for n in ("boot1", "boot2")}
    again = server.cli("agents", "bootstrap", "web", "--server", server.agents_addr, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 new agent(s), 2 already an agent, 0 failed" in again.stdout
    machine = os.uname().nodename
    for name in ("boot1", "boot2"):
        assert (
            f"{name}  already an agent: online under this name on this host ({machine}); "
            "nothing changed\n"
        ) in again.stdout, again.stdout
    assert {n: (hosts / n / "state" / "agent.pid").read_text() for n in pids} == pids
    assert len([e for e in server.get("/api/audit", limit=1000)["events"]
                if e["action"] == "agent.token"]) == 2  # fmt: skip


@pytest.mark.slow
def test_failed_hosts_say_why_and_the_token_stays_root_only(
    tmp_path: Path,
    procs: Procs,
    start_server: ServerFactory,
    easytask_wheel: Path,
    hosts: Path,
) -> None:
    """A host whose sshd does not answer fails with "ssh unreachable"; an agent that never
    comes online fails with "timeout" and its log; a pip that cannot install fails with pip's
    words; the exit status says some failed. The
    server built its wheel from its source tree, having none in its state dir. The token
    it was given is in a 0600 file in a 0700 dir, and in neither the agent's argv nor its
    environment."""
    sshd: SSHD = start_sshd(tmp_path / "sshd", procs)
    host_pip_config(sshd.root / "home")
    closed = free_port()
    inventory = write(
        tmp_path / "inventory",
        f"""\
        late {sshd.host_vars()} easytask_agent_prefix={hosts / "late"}
        nopip {sshd.host_vars()} easytask_agent_prefix={hosts / "late"}
        gone {sshd.host_vars().replace(f"ansible_port={sshd.port}", f"ansible_port={closed}")}
        agentful easytask_connection=agent
        """,
    )
    server = start_server(inventory)  # no wheel in its state dir: it builds its own once
    refused = server.http.post("/api/agents/bootstrap", json={"pattern": "agentful"})
    assert refused.status_code == 400 and "is not an agentless host" in refused.json()["error"]
    with user_client(server, "op", "operator") as operator:  # admins only
        assert operator.post("/api/agents/bootstrap", json={"pattern": "late"}).status_code == 403
        assert operator.get("/api/agents/bootstrap/x").status_code == 403
    assert server.get("/api/audit", action="agent.bootstrap")["events"] == []

    nowhere = f"127.0.0.1:{free_port()}"  # no server: the agent never comes online
    # --index-url: no wheel is sent, the host's pip looks for easytask==VERSION in that index
    # (nopip shares late's prefix: the venv it leaves is the one late then installs into)
    empty = tmp_path / "index" / "simple"
    empty.mkdir(parents=True)
    result = server.cli(
        "agents", "bootstrap", "nopip", "--index-url", f"file://{empty}", "--server", nowhere,
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(
        r"  nopip: pip install failed \(exit 1\): .*easytask==0\.1\.0", result.stdout
    ), result.stdout
    assert list((hosts / "late" / "wheels").iterdir()) == []
    assert not (hosts / "late" / "state" / "enroll").exists()  # no token minted or written
    assert server.get("/api/audit", action="agent.token")["events"] == []

    result = server.cli(
        "agents", "bootstrap", "late,gone", "--server", nowhere, "--timeout", "5", timeout=240
    )
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "0 new agent(s), 0 already an agent, 2 failed" in out
    assert re.search(r"  gone: ssh unreachable: cannot connect to .*127\.0\.0\.1:\d+", out), out
    assert "  late: timeout: the agent was not online after 5s; its log: " in out, out
    assert (server.state_dir / "wheels" / easytask_wheel.name).is_file()
    token_file = hosts / "late" / "state" / "enroll"
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert token_file.parent.stat().st_mode & 0o777 == 0o700
    token = token_file.read_text().strip()
    assert TOKEN.fullmatch(token.encode())
    pid = int((hosts / "late" / "state" / "agent.pid").read_text())
    wait_until(lambda: Path(f"/proc/{pid}/cmdline").exists(), timeout=5, what="agent running")
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert f"--enroll-file\0{token_file}".encode() in cmdline
    for name in ("cmdline", "environ"):  # what `ps` and /proc show of the agent
        assert token.encode() not in Path(f"/proc/{pid}/{name}").read_bytes(), name
    assert token not in (hosts / "late" / "agent.sh").read_text()


def _plan() -> HostPlan:
    return HostPlan(
        name="web1",
        server="sched.example.com:8022",
        prefix=PurePosixPath("/opt/easytask-agent"),
        groups=("web", "eu"),
        version="0.1.0",
    )


def test_the_systemd_unit_bootstrap_writes(tmp_path: Path) -> None:
    """Where systemd is PID 1 and the login is root, bootstrap writes the unit and env file of
    `agents install --systemd` for the venv under the prefix: the token a root-only file handed
    over as a credential, in no unit or env file text."""
    unit_file, env_file = host_files(_plan(), "systemd")
    assert str(unit_file.path) == "/etc/systemd/system/easytask-agent-web1.service"
    assert (unit_file.mode, env_file.mode) == (0o644, 0o600)
    service = parse_unit(unit_file.text)["Service"]
    assert values(service, "ExecStart") == ["/opt/easytask-agent/venv/bin/easytask agent"]
    assert values(service, "LoadCredential") == ["enroll:/opt/easytask-agent/state/enroll"]
    assert values(service, "Environment") == ["EASYTASK_AGENT_ENROLL_FILE=%d/enroll"]
    assert values(service, "Restart") == ["always"]
    assert parse_env_file(env_file.text) == {
        "EASYTASK_AGENT_SERVER": "sched.example.com:8022",
        "EASYTASK_AGENT_NAME": "web1",
        "EASYTASK_AGENT_STATE_DIR": "/opt/easytask-agent/state",
        "EASYTASK_AGENT_GROUPS": "web,eu",
        "EASYTASK_LOG_FORMAT": "json",
    }


def test_the_detached_start_script(tmp_path: Path) -> None:
    """Without systemd: `PREFIX/agent.sh` (0700) starts the agent in its own session, immune to
    hangups, its log and pid in the state dir; the token only as `--enroll-file PATH`."""
    (script,) = host_files(_plan(), "detached")
    assert (str(script.path), script.mode) == ("/opt/easytask-agent/agent.sh", 0o700)
    assert script.text == start_script(_plan())
    assert (
        "set -- /opt/easytask-agent/venv/bin/easytask agent --server sched.example.com:8022 "
        "--name web1 --state-dir /opt/easytask-agent/state --group web --group eu\n"
    ) in script.text
    assert 'set -- "$@" --enroll-file "$state/enroll"' in script.text
    assert 'setsid nohup "$@" </dev/null >>"$state/agent.log" 2>&1 &' in script.text
    assert 'echo $! >"$state/agent.pid"' in script.text


def test_an_online_agent_of_the_name_reaches_an_ssh_host(tmp_path: Path) -> None:
    """The rule the server applies after a bootstrap: a host of `via_agent` (an accepted agent
    of its name is online) reads easytask_connection=agent whatever the inventory says; the
    other hosts keep theirs."""
    inventory = load_inventory(
        write(
            tmp_path / "hosts",
            """\
            boot1 easytask_connection=ssh ansible_host=10.0.0.1
            boot2 easytask_connection=ssh ansible_host=10.0.0.2
            """,
        )
    )
    merged = inventory.with_extra_hosts({}, via_agent={"boot1"})
    assert merged.host_vars("boot1")["easytask_connection"] == "agent"
    assert merged.host_vars("boot1")["ansible_host"] == "10.0.0.1"
    assert merged.host_vars("boot2")["easytask_connection"] == "ssh"
    assert inventory.host_vars("boot1")["easytask_connection"] == "ssh"
    assert plan_adhoc(merged, "all", "true")[0].connection == "agent"
