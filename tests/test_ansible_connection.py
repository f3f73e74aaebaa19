"""An unmodified Ansible inventory against a real server and real loopback sshd's: hosts without
an agent are reached over SSH with their `ansible_*` variables, a `ProxyJump` host through its
jump host, what cannot be honoured is refused or reported."""

from __future__ import annotations

import os
import pwd
import re
import socket
from pathlib import Path

from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import SSHD, Procs, wait_until
from tests.support.sshd import start_sshd


def ansible_vars(sshd: SSHD) -> str:
    """What an Ansible user writes for a host: no easytask_* variable."""
    return (
        f"ansible_host=127.0.0.1 ansible_port={sshd.port} ansible_user={sshd.user} "
        f"ansible_ssh_private_key_file={sshd.client_key}"
    )


def test_an_ansible_inventory_runs_agentless_and_through_a_jump_host(
    tmp_path: Path, start_server: ServerFactory, start_agent: AgentFactory, procs: Procs
) -> None:
    """`easytask run all -a uptime` on an Ansible inventory with no agent reaches every host over
    SSH, one of them through `-o ProxyJump=` (the jump sshd logs the forward to the target's
    port); once a host enrols an agent, the same command reaches it through the agent."""
    target = start_sshd(tmp_path / "target", procs)
    jump = start_sshd(tmp_path / "jump", procs, log_level="DEBUG1")
    # the jump host takes the target's key, as a bastion takes the user's key
    with (jump.root / "authorized_keys").open("a") as keys:
        keys.write((target.root / "client_key.pub").read_text())
    known = write(
        tmp_path / "known_hosts", target.known_hosts.read_text() + jump.known_hosts.read_text()
    )
    inventory = write(
        tmp_path / "inv" / "hosts.ini",
        f"""\
        [web]
        web1 {ansible_vars(target)}

        [behind]
        hidden1 {ansible_vars(target)}

        [behind:vars]
        ansible_ssh_common_args='-o ProxyJump={jump.user}@127.0.0.1:{jump.port}'
        """,
    )
    server = start_server(inventory, "--ssh-known-hosts", str(known))

    result = server.cli("run", "all", "-a", "uptime")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^web1\s+\| .*load average", result.stdout, re.M), result.stdout
    assert re.search(r"^hidden1\s+\| .*load average", result.stdout, re.M), result.stdout
    runs = server.get("/api/runs", limit=10)["runs"]
    assert {(r["host"], r["connection"]) for r in runs} == {("web1", "ssh"), ("hidden1", "ssh")}
    # the jump sshd forwarded a connection to the target's port: hidden1 came through it
    forwarded = re.compile(
        rf"server_request_direct_tcpip: .*target 127\.0\.0\.1 port {target.port}\b"
    )
    wait_until(
        lambda: forwarded.search((jump.root / "sshd.log").read_text()),
        timeout=10,
        what="the jump sshd's forward",
    )

    start_agent(server, "web1")
    result = server.cli("run", "web", "-a", "uptime")
    assert result.returncode == 0, result.stdout + result.stderr
    latest = server.get("/api/runs", limit=1)["runs"][0]
    assert (latest["host"], latest["connection"]) == ("web1", "agent")


def test_connection_variables_refused_or_reported(
    tmp_path: Path, start_server: ServerFactory, sshd: SSHD
) -> None:
    """`ansible_connection=winrm` or `local` and a plain `ansible_password` refuse the
    submission naming the host (nothing stored, nothing run); a variable EasyTask does not
    honour is reported once per job, in the CLI's output and on the job page, however many
    tasks reach the host."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[win]\nwin1 ansible_connection=winrm\n")
    server = start_server(inventory, "--ssh-known-hosts", str(sshd.known_hosts))
    refused = server.cli("run", "all", "-a", "uptime")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "host 'win1': ansible_connection 'winrm' is not supported" in refused.stderr
    write(inventory, f"[me]\nme1 {ansible_vars(sshd)} ansible_connection=local\n")
    refused = server.cli("run", "all", "-a", f"touch {tmp_path / 'ran-here'}")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert not (tmp_path / "ran-here").exists()
    assert "host 'me1': ansible_connection 'local' would run on the EasyTask server" in (
        refused.stderr
    )
    password = "pw-" + "x7q" * 4
    write(inventory, f"[pw]\npw1 {ansible_vars(sshd)} ansible_password={password}\n")
    refused = server.cli("run", "all", "-a", "uptime")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "host 'pw1': ansible_password is a password in clear" in refused.stderr
    assert "easytask_credential" in refused.stderr and password not in refused.stderr
    assert server.get("/api/runs")["runs"] == []

    write(inventory, f"[pipe]\npipe1 {ansible_vars(sshd)} ansible_ssh_pipelining=true\n")
    book = write(
        tmp_path / "book.yml",
        """\
        name: two
        hosts: pipe
        tasks:
          - name: first
            command: "true"
          - name: second
            command: "true"
            needs: [first]
        """,
    )
    played = server.cli("play", str(book))
    assert played.returncode == 0, played.stdout + played.stderr
    warning = "host pipe1: ansible_ssh_pipelining is not honoured by EasyTask (ignored)"
    assert played.stderr.count(warning) == 1, played.stderr
    ran = server.cli("run", "pipe", "-a", "true")
    assert ran.returncode == 0 and ran.stderr.count(warning) == 1, ran.stderr
    job_id = server.get("/api/runs", limit=1)["runs"][0]["job"]
    assert server.get(f"/api/jobs/{job_id}")["job"]["warnings"] == [warning]
    console = Browserless(server)
    assert console.login("admin", admin_password(server)).status_code == 303
    page = console.http.get(f"/jobs/{job_id}").text
    console.close()
    assert page.count(warning) == 1, page


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its parent does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_local_connection_runs_on_the_server_host_only_when_allowed(
    tmp_path: Path, start_server: ServerFactory
) -> None:
    """`ansible_connection: local` is refused naming the host and the setting that allows it;
    with `--allow-local-connection` the command runs on the server's host as the server's user:
    stdout and stderr streamed, the exit code kept, a secret on stdin (not in the command line,
    masked in the output), none of the server's environment, a timeout ending the command's
    whole process group; audited with the job and on the run's timeline."""
    inventory = write(tmp_path / "inv" / "hosts.ini", "[here]\nme1 ansible_connection=local\n")
    marker = tmp_path / "ran-here"
    refused_server = start_server(inventory)
    refused = refused_server.cli("run", "me1", "-a", f"touch {marker}")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "host 'me1': ansible_connection 'local' would run on the EasyTask server" in (
        refused.stderr
    )
    assert "--allow-local-connection" in refused.stderr
    assert "EASYTASK_ALLOW_LOCAL_CONNECTION" in refused.stderr
    assert refused_server.get("/api/runs")["runs"] == []
    assert not marker.exists()
    refused_server.close()

    server = start_server(inventory, "--allow-local-connection")
    user = pwd.getpwuid(os.getuid()).pw_name
    command = (
        'id -un; echo "t=$TOKEN"; echo to-stderr >&2; '
        "tr '\\0' ' ' </proc/$$/cmdline | grep -c 's3c[r]3t'; "
        "env | grep -c -e '^EASYTASK_' -e '^PYTHONPATH=' ; exit 3"
    )
    job = server.submit("me1", command, secrets={"TOKEN": "s3cr3t-value"})
    data = server.wait_job(job["job"]["id"], timeout=60)
    (run,) = data["runs"]
    assert (run["state"], run["exit_code"], run["connection"]) == ("failed", 3, "local")
    lines = server.log_lines(run["id"])
    out = [ln["text"] for ln in lines if ln["stream"] == "stdout"]
    err = [ln["text"] for ln in lines if ln["stream"] == "stderr"]
    assert out == [user, "t=****", "0", "0"], lines
    assert err == ["to-stderr"], lines
    assert run["ran_as"] == user
    detail = server.get(f"/api/runs/{run['id']}")
    dispatched = [e for e in detail["events"] if e["kind"] == "dispatched"]
    assert dispatched and dispatched[0]["detail"] == f"local: the server's host, as {user}"
    events = server.get("/api/audit", action="job.submit")["events"]
    assert events[0]["detail"]["local"] == ["me1"]

    # become goes through sudo, as on agentless hosts
    job = server.submit("me1", "id -un", become=True, become_user="nobody")
    (run,) = server.wait_job(job["job"]["id"], timeout=60)["runs"]
    assert (run["state"], run["ran_as"]) == ("success", "nobody (become, sudo)"), run
    became = [ln["text"] for ln in server.log_lines(run["id"]) if ln["stream"] == "stdout"]
    assert became == ["nobody"], became

    # a playbook naming a fact gathers the host's, as on agentless hosts
    book = write(
        tmp_path / "facts.yml",
        """\
        name: facts
        hosts: me1
        tasks:
          - name: name
            command: "echo host={{ ansible_hostname }}"
        """,
    )
    played = server.cli("play", str(book))
    assert played.returncode == 0, played.stdout + played.stderr
    assert f"host={socket.gethostname().split('.')[0]}" in played.stdout, played.stdout

    pidfile = tmp_path / "child.pid"
    job = server.submit("me1", f"sleep 300 & echo $! >{pidfile}; wait", timeout="1s")
    data = server.wait_job(job["job"]["id"], timeout=60)
    (run,) = data["runs"]
    assert run["state"] in ("failed", "terminated"), run
    assert "timeout after 1s" in (run["reason"] or ""), run
    child = int(pidfile.read_text())
    wait_until(lambda: not _alive(child), timeout=15, what="the command's child killed")
