"""Privilege escalation (become): playbook keys, `run -b`, inventory `ansible_become*`, decided by
agents (root: the user itself; not root: `sudo -n`) and done with `sudo -n` on agentless hosts.

Real processes throughout: a root agent, a non-root agent with a real sudoers rule, the
loopback sshd.  Test users are created by the fixtures and removed after.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from easytask.errors import APIError, InventoryError, PlaybookError, UsageError
from easytask.inventory import load_inventory
from easytask.plan import plan_playbook
from easytask.plan.become import Become, BecomeRequest, agentless_refusal, resolve_become
from easytask.playbook import parse_playbook
from easytask.scheduler.playrows import resume_spec
from easytask.service.jobs import plan_become
from tests.browser.support import Browserless, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import REPO, SSHD, ServerHandle, launch_agent, start_sshd, wait_until
from tests.support.pg import PostgresCluster
from tests.support.procs import Procs

TARGET = "etbecome"  # the user runs become
GROUP = "etbecomegrp"  # a supplementary group of TARGET
AGENT_USER = "etbecagent"  # a non-root agent's own account
SUDOERS = Path("/etc/sudoers.d/easytask-test-become")
PW_USER = "etbecpw"  # an SSH login whose sudo rule asks for its password
PW_SUDOERS = Path("/etc/sudoers.d/easytask-test-become-pw")
PW = "Pw-of-etbecpw-7c1"
SU_USER = "etbecsu"  # a user su becomes, with its own password
SU_PW = "Su-pw-of-etbecsu-4e2"

# -- resolution (pure) --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hostvars", "levels", "expected"),
    [
        ({}, [], None),
        ({}, [BecomeRequest(become=True)], Become("root")),
        ({}, [BecomeRequest(user="deploy")], None),  # a user alone asks nothing (as Ansible)
        ({}, [BecomeRequest(True, "deploy")], Become("deploy")),
        # the task's answer over the play's
        ({}, [BecomeRequest(True, "deploy"), BecomeRequest(become=False)], None),
        ({}, [BecomeRequest(True, "deploy"), BecomeRequest(user="app")], Become("app")),
        # the inventory's variables over the keywords, as in Ansible
        ({"ansible_become": "yes"}, [], Become("root")),
        ({"ansible_become": "false"}, [BecomeRequest(become=True)], None),
        ({"ansible_become_user": "app"}, [BecomeRequest(True, "deploy")], Become("app")),
        ({"ansible_become": True, "ansible_become_method": "su"}, [], Become("root", "su")),
    ],
)
def test_become_is_resolved_as_ansible_does(
    hostvars: dict[str, Any], levels: list[BecomeRequest], expected: Become | None
) -> None:
    """Command line < play < task < inventory variables; the default user is root."""
    assert resolve_become("h1", hostvars, *levels) == expected


@pytest.mark.parametrize(
    ("hostvars", "error", "message"),
    [
        (
            {"ansible_become": True, "ansible_become_method": "doas"},
            InventoryError,
            "host 'h1': ansible_become_method 'doas' is not supported (use sudo or su)",
        ),
        ({"ansible_become": "maybe"}, InventoryError, "host 'h1': ansible_become: 'maybe'"),
        ({"ansible_become_user": "a b"}, UsageError, "host 'h1': ansible_become_user: 'a b'"),
    ],
)
def test_bad_become_variables_name_host_and_value(
    hostvars: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A become variable EasyTask cannot honour is an error naming the host and the value."""
    with pytest.raises(error) as caught:
        resolve_become("h1", hostvars)
    assert message in str(caught.value)


def test_su_on_agentless_hosts_asks_for_a_become_password() -> None:
    """su needs a password: refused on an agentless host that has no become password, with what
    to do instead; never on the server's own host (local); sudo needs none."""
    refusal = agentless_refusal("h1", Become("root", "su"), "ssh", password=False)
    assert refusal is not None and "needs a become password" in refusal
    assert "easytask_credential: NAME" in refusal
    assert agentless_refusal("h1", Become("root", "su"), "ssh", password=True) is None
    assert agentless_refusal("h1", Become("root", "su")) is None  # not known yet: planning
    local = agentless_refusal("h1", Become("root", "su"), "local", password=True)
    assert local is not None and "not available on the server's own host" in local
    assert agentless_refusal("h1", Become("root", "sudo"), "ssh", password=False) is None


def test_playbook_become_keys_are_checked_and_su_over_ssh_without_password_is_refused(
    tmp_path: Path,
) -> None:
    """`become` must be a boolean and `become_user` a user name (errors at file:line); a play
    that would `su` on an agentless host with no become password is refused when it is
    submitted (its credentials known), naming task and host."""
    bad = "hosts: all\nbecome: yes please\ntasks:\n  - name: a\n    command: id\n    become_user: 'x y'\n"
    with pytest.raises(PlaybookError) as caught:
        parse_playbook(bad, tmp_path / "pb.yml")
    assert [str(e) for e in caught.value.errors] == [
        f"{tmp_path / 'pb.yml'}:2:9: 'become' in the play must be true or false, got 'yes please'",
        f"{tmp_path / 'pb.yml'}:6:18: 'become_user' in task 'a' must be a user name, got 'x y'",
    ]
    inv = write(
        tmp_path / "inv.ini",
        """\
        agent1 ansible_become_method=su
        ssh1 easytask_connection=ssh ansible_become_method=su
        """,
    )
    fleet = load_inventory(inv).with_extra_hosts({}, agents={"agent1"})  # agent1 enrolled one
    book = parse_playbook(
        "hosts: all\nbecome: true\ntasks:\n  - name: a\n    command: id\n", tmp_path / "pb.yml"
    )
    plan = plan_playbook(book, fleet)
    with pytest.raises(APIError) as refused:
        plan_become(plan, {})
    assert "task 'a': host 'ssh1': become method 'su' needs a become password" in str(refused.value)
    assert plan_become(plan, {"ssh1": "pw"}) == {"a": {"root": ["agent1", "ssh1"]}}
    # the agent host alone: its agent decides how, the method does not matter
    assert plan_become(plan_playbook(book, fleet, limit="agent1"), {}) == {
        "a": {"root": ["agent1"]}
    }


def test_the_command_line_is_the_lowest_level_of_a_play_and_is_kept_for_a_resume(
    tmp_path: Path,
) -> None:
    """`play -b --become-user U` goes under the play's and tasks' keys and the inventory's
    variables, and is kept with the job so a restarted server plans the same become."""
    inv = write(tmp_path / "inv.ini", "h1\nh2 ansible_become_user=nobody\n")
    book = parse_playbook(
        "hosts: all\ntasks:\n  - {name: a, command: id}\n"
        "  - {name: b, command: id, become_user: app}\n  - {name: c, command: id, become: false}\n",
        tmp_path / "pb.yml",
    )
    cli = BecomeRequest(become=True, user="deploy")
    plan = plan_playbook(book, load_inventory(inv), become=cli)

    def who(task: str, host: str) -> Become | None:
        request = plan.become_request(plan.task(task))
        return resolve_become(host, plan.host_vars[host], request)

    assert [who(t, "h1") for t in "abc"] == [Become("deploy"), Become("app"), None]
    assert who("a", "h2") == Become("nobody")
    spec = resume_spec(plan)
    assert spec["become"] == {"become": True, "user": "deploy"}
    again = plan_playbook(book, load_inventory(inv), become=BecomeRequest.from_dict(spec["become"]))
    assert again.become == cli
    assert "become" not in resume_spec(plan_playbook(book, load_inventory(inv)))


# -- fixtures -----------------------------------------------------------------------------------


def _useradd(name: str, *args: str) -> bool:
    try:
        pwd.getpwnam(name)
        return False
    except KeyError:
        subprocess.run(["useradd", *args, name], check=True)
        return True


@pytest.fixture(scope="module")
def target_user() -> Iterator[pwd.struct_passwd]:
    """TARGET, with a home and a supplementary group (created when missing, removed after)."""
    if os.geteuid() != 0:
        pytest.skip("becoming another user needs root to set the users up")
    made_group = False
    try:
        grp.getgrnam(GROUP)
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
        made_group = True
    made = _useradd(TARGET, "--create-home", "--shell", "/bin/sh", "--groups", GROUP)
    yield pwd.getpwnam(TARGET)
    if made:
        subprocess.run(["userdel", "--remove", TARGET], check=False, capture_output=True)
    if made_group:
        subprocess.run(["groupdel", GROUP], check=False)


@pytest.fixture(scope="module")
def sudo_rule(target_user: pwd.struct_passwd) -> Iterator[str]:
    """AGENT_USER may run anything as TARGET (only) without a password: a sudoers drop-in."""
    if shutil.which("sudo") is None:
        pytest.fail("sudo is missing: `make test` installs it (scripts/sysdeps.sh)")
    made = _useradd(AGENT_USER, "--no-create-home", "--shell", "/bin/sh")
    rule = f"{AGENT_USER} ALL=({TARGET}) NOPASSWD: ALL\n"
    tmp = SUDOERS.with_suffix(".tmp")
    tmp.write_text(rule)
    tmp.chmod(0o440)
    subprocess.run(["visudo", "-c", "-q", "-f", str(tmp)], check=True)
    tmp.rename(SUDOERS)  # sudo ignores names with a dot: the .tmp file is never read
    yield AGENT_USER
    SUDOERS.unlink(missing_ok=True)
    if made:
        subprocess.run(["userdel", AGENT_USER], check=False)


@pytest.fixture(scope="module")
def password_rule(target_user: pwd.struct_passwd) -> Iterator[str]:
    """PW_USER (password PW) may run anything as TARGET with its password: sudo asks for it."""
    if shutil.which("sudo") is None:
        pytest.fail("sudo is missing: `make test` installs it (scripts/sysdeps.sh)")
    made = _useradd(PW_USER, "--create-home", "--shell", "/bin/sh")
    subprocess.run(["chpasswd"], input=f"{PW_USER}:{PW}\n", text=True, check=True)
    tmp = PW_SUDOERS.with_suffix(".tmp")
    tmp.write_text(
        f"Defaults:{PW_USER} !lecture, timestamp_timeout=0\n{PW_USER} ALL=({TARGET}) ALL\n"
    )
    tmp.chmod(0o440)
    subprocess.run(["visudo", "-c", "-q", "-f", str(tmp)], check=True)
    tmp.rename(PW_SUDOERS)
    yield PW_USER
    PW_SUDOERS.unlink(missing_ok=True)
    if made:
        subprocess.run(["userdel", "--remove", PW_USER], check=False, capture_output=True)


def _run(server: ServerHandle, pattern: str, command: str, **extra: Any) -> dict[str, Any]:
    job = server.submit(pattern, command, **extra)
    data = server.wait_job(job["job"]["id"], timeout=60)
    (run,) = data["runs"]
    run["output"] = [ln["text"] for ln in server.log_lines(run["id"]) if ln["stream"] != "system"]
    return dict(run)


# -- root agent ---------------------------------------------------------------------------------


def test_root_agent_starts_the_command_as_the_user(
    start_server: ServerFactory, start_agent: AgentFactory, target_user: pwd.struct_passwd
) -> None:
    """A root agent with --allow-become runs the command as the user: ids, groups, login
    environment, home as working directory; the run, the audit and the CLI say whom as."""
    server = start_server(None)
    start_agent(server, "bec1", "--allow-become", f"nobody,{TARGET}")
    run = _run(
        server,
        "bec1",
        'id -un; id -Gn; echo "$HOME $USER $LOGNAME $SHELL"; pwd',
        become=True,
        become_user=TARGET,
    )
    assert run["state"] == "success", run["reason"]
    home = target_user.pw_dir
    assert run["output"][0] == TARGET
    assert GROUP in run["output"][1].split()
    assert run["output"][2] == f"{home} {TARGET} {TARGET} /bin/sh"
    assert run["output"][3] == home
    assert run["ran_as"] == f"{TARGET} (become)"
    detail = server.get(f"/api/runs/{run['id']}")
    assert detail["run"]["ran_as"] == f"{TARGET} (become)"
    console = Browserless(server)
    assert console.login("admin", admin_password(server)).status_code == 303
    page = console.http.get(f"/runs/{run['id']}").text
    console.http.close()
    assert f'<dd data-testid="ran-as">{TARGET} (become)</dd>' in page
    events = server.get("/api/audit", action="job.submit")["events"]
    assert events[0]["detail"]["become"] == {TARGET: ["bec1"]}

    # the CLI: -b --become-user, and the summary's AS column
    done = server.cli("run", "bec1", "-b", "--become-user", "nobody", "-a", "id -un")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bec1 | nobody" in done.stdout
    header = next(line for line in done.stdout.splitlines() if line.startswith("HOST"))
    assert header.split() == ["HOST", "STATUS", "EXIT", "DURATION", "AS", "REASON"]
    assert "nobody (become)" in done.stdout

    # no become: the agent's own user, recorded too
    plain = _run(server, "bec1", "id -un")
    assert plain["output"] == ["root"] and plain["ran_as"] == "root"


def test_agent_refuses_users_it_does_not_allow(
    start_server: ServerFactory, start_agent: AgentFactory, target_user: pwd.struct_passwd
) -> None:
    """Default: no user may be asked for; a user not in --allow-become is refused with the
    reason on the run, and nothing runs. Asking for the user commands run as anyway is no
    change and runs."""
    server = start_server(None)
    start_agent(server, "bec2")
    refused = _run(server, "bec2", "id -un", become=True, become_user=TARGET)
    assert refused["state"] == "failed"
    assert refused["reason"] == (
        f"refused by the agent: become '{TARGET}' is not allowed: this agent allows no become "
        "(--allow-become names the users a run may ask for)"
    )
    assert refused["ran_as"] == ""
    assert TARGET not in refused["output"]
    same = _run(server, "bec2", "id -un", become=True)  # root, as the agent is
    assert same["state"] == "success" and same["output"] == ["root"]

    start_agent(server, "bec3", "--allow-become", "nobody")
    other = _run(server, "bec3", "id -un", become=True, become_user=TARGET)
    assert other["state"] == "failed"
    assert other["reason"] == (
        f"refused by the agent: become '{TARGET}' is not allowed on this agent "
        "(--allow-become nobody)"
    )
    bad = server.http.post(
        "/api/jobs", json={"pattern": "bec3", "command": "id", "become_user": "a;b"}
    )
    assert bad.status_code == 400 and "'a;b' is not a user name" in bad.json()["error"]


# -- non-root agent: sudo -n --------------------------------------------------------------------


def _sleeping(user: str) -> bool:
    """Whether a `sleep 300` of that user runs."""
    found = subprocess.run(["pgrep", "-u", user, "-f", "sleep 300"], capture_output=True)
    return found.returncode == 0


def _python_for_others() -> list[str]:
    """This interpreter may live in root's home: another user runs the system Python of the
    same version on this checkout and this environment's packages."""
    system = Path("/usr/bin/python3")
    if not system.exists():
        pytest.fail("/usr/bin/python3 is missing: `make test` installs it (scripts/sysdeps.sh)")
    paths = f"{REPO}:{sysconfig.get_paths()['purelib']}:{sysconfig.get_paths()['platlib']}"
    return [f"PYTHONPATH={paths}", str(system)]


def test_non_root_agent_becomes_through_sudo(
    start_server: ServerFactory, procs: Procs, sudo_rule: str
) -> None:
    """An agent that is not root runs become through `sudo -n -u USER`: the sudoers rule lets
    it become TARGET; for root it has no rule, and sudo -n fails at once instead of asking."""
    server = start_server(None)
    state = Path(tempfile.mkdtemp(prefix="easytask-become-"))
    try:
        entry = pwd.getpwnam(sudo_rule)
        os.chown(state, entry.pw_uid, entry.pw_gid)
        as_agent_user = [
            "setpriv",
            f"--reuid={entry.pw_uid}",
            f"--regid={entry.pw_gid}",
            "--init-groups",
            "--",
            "env",
            f"HOME={state}",  # not root's: its config files are not the agent's to read
            *_python_for_others(),
            "-m",
            "easytask",
        ]
        launch_agent(
            procs,
            server,
            "bec4",
            state,
            "--keepalive",
            "1",
            "--allow-become",
            f"{TARGET},root",
            command=as_agent_user,
            timeout=40,
        )
        mine = _run(server, "bec4", "id -un")
        assert mine["output"] == [sudo_rule] and mine["ran_as"] == sudo_rule
        run = _run(server, "bec4", 'id -un; echo "$HOME"', become=True, become_user=TARGET)
        assert run["state"] == "success", run["reason"]
        assert run["output"] == [TARGET, pwd.getpwnam(TARGET).pw_dir]
        assert run["ran_as"] == f"{TARGET} (become)"
        # a secret reaches the command under sudo (on its stdin: sudo's env_reset drops the
        # environment, and a command line is for everyone to see), masked in the output
        secret = _run(
            server, "bec4", 'echo "t=$TOKEN"', become=True, become_user=TARGET,
            secrets={"TOKEN": "s3cr3t-value"},
        )  # fmt: skip
        assert secret["state"] == "success" and secret["output"] == ["t=****"], secret
        root = _run(server, "bec4", "id -un", become=True)
        assert root["state"] == "failed" and root["exit_code"] == 1
        assert any("a password is required" in line for line in root["output"]), root
        # a kill reaches the command under sudo (sudo relays the agent's TERM to it)
        job = server.submit("bec4", "sleep 300", become=True, become_user=TARGET)
        run_id = job["runs"][0]["id"]
        wait_until(lambda: _sleeping(TARGET), timeout=30, what="sleep as the target user")
        server.post(f"/api/runs/{run_id}/kill")
        ended = server.wait_job(job["job"]["id"], timeout=60)
        assert ended["runs"][0]["state"] == "terminated", ended
        wait_until(lambda: not _sleeping(TARGET), timeout=15, what="the sleep to end")
    finally:
        shutil.rmtree(state, ignore_errors=True)


# -- agentless: sudo -n over SSH ----------------------------------------------------------------


def test_agentless_host_becomes_through_sudo(
    start_server: ServerFactory, sshd: SSHD, tmp_path: Path
) -> None:
    """Over plain SSH, `-b --become-user nobody` runs the command through sudo -n; the
    inventory's ansible_become* variables do it without flags; su is refused at submission
    (it needs a become password) and an unknown method names the host and the value."""
    inv = write(
        tmp_path / "inv.ini",
        f"""\
        [plain]
        ssh1 {sshd.host_vars()}
        [escalated]
        ssh2 {sshd.host_vars()} ansible_become=true ansible_become_user=nobody
        [su]
        ssh3 {sshd.host_vars()} ansible_become_method=su
        [odd]
        ssh4 {sshd.host_vars()} ansible_become=yes ansible_become_method=doas
        """,
    )
    server = start_server(inv)
    done = server.cli("run", "ssh1", "-b", "--become-user", "nobody", "-a", "id -un")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ssh1 | nobody" in done.stdout
    assert "nobody (become, sudo)" in done.stdout
    plain = _run(server, "ssh1", "id -un")
    assert plain["output"] == [sshd.user] and plain["ran_as"] == sshd.user
    by_vars = _run(server, "ssh2", "id -un; echo $0")
    assert by_vars["output"][0] == "nobody" and by_vars["ran_as"] == "nobody (become, sudo)"
    # a secret exported to the command reaches it under sudo, masked
    secret = _run(server, "ssh2", 'echo "t=$TOKEN"', secrets={"TOKEN": "s3cr3t-value"})
    assert secret["output"][0] == "t=****"

    su = server.http.post("/api/jobs", json={"pattern": "ssh3", "command": "id", "become": True})
    assert su.status_code == 400
    assert "become method 'su' needs a become password" in su.json()["error"]
    odd = server.cli("run", "ssh4", "-a", "id")
    assert odd.returncode == 2
    assert "host 'ssh4': ansible_become_method 'doas' is not supported" in odd.stderr
    assert server.get("/api/runs", host="ssh3")["runs"] == []


def test_agentless_become_password_from_the_credential_store(
    start_server: ServerFactory, procs: Procs, tmp_path: Path, password_rule: str
) -> None:
    """A host whose sudo asks for a password becomes with the `become-password` credential its
    inventory names: `sudo -S` reads it from stdin (never argv), the run's secrets still reach
    the command; without the credential sudo -n fails at once; the password is stored nowhere."""
    # an sshd whose authorized keys the (non-root) login user can read
    root = Path(tempfile.mkdtemp(prefix="easytask-sshd-pw-"))
    root.chmod(0o755)
    sshd = start_sshd(root, procs)
    (root / "authorized_keys").chmod(0o644)
    inv = write(
        tmp_path / "inv.ini",
        f"""\
        [pw]
        pw1 {sshd.host_vars()} ansible_user={password_rule} easytask_credential=sudo-pw
        pw2 {sshd.host_vars()} ansible_user={password_rule}
        pw3 {sshd.host_vars()} easytask_credential=sudo-pw
        """,
    )
    server = start_server(inv)
    made = server.cli("secrets", "set", "sudo-pw", "--kind", "become-password", input=PW + "\n")
    assert made.returncode == 0, made.stdout + made.stderr
    run = _run(
        server, "pw1", 'id -un; echo "t=$TOKEN"', become=True, become_user=TARGET,
        secrets={"TOKEN": "s3cr3t-value"},
    )  # fmt: skip
    assert run["state"] == "success", run["reason"]
    assert run["output"] == [TARGET, "t=****"]
    assert run["ran_as"] == f"{TARGET} (become, sudo)"
    # root's sudo asks for no password: the password line is skipped, never the command's
    asks_none = _run(
        server, "pw3", 'id -un; echo "t=$TOKEN ${#TOKEN}"', become=True, become_user=TARGET,
        secrets={"TOKEN": "s3cr3t-value"},
    )  # fmt: skip
    assert asks_none["state"] == "success", asks_none["reason"]
    assert asks_none["output"] == [TARGET, f"t=**** {len('s3cr3t-value')}"]
    without = _run(server, "pw2", "id -un", become=True, become_user=TARGET)
    assert without["state"] == "failed"
    assert any("password is required" in line for line in without["output"]), without
    for path in server.state_dir.rglob("*"):
        if path.is_file():
            assert PW.encode() not in path.read_bytes(), path
    shutil.rmtree(root, ignore_errors=True)


# -- agentless: su on a terminal ----------------------------------------------------------------


@pytest.fixture(scope="module")
def su_user() -> Iterator[str]:
    """SU_USER, whose password is SU_PW (su asks for the target user's own)."""
    if os.geteuid() != 0:
        pytest.skip("su to another user needs root to set the users up")
    made = _useradd(SU_USER, "--create-home", "--shell", "/bin/sh")
    subprocess.run(["chpasswd"], input=f"{SU_USER}:{SU_PW}\n", text=True, check=True)
    yield SU_USER
    if made:
        subprocess.run(["userdel", "--remove", SU_USER], check=False, capture_output=True)


def test_agentless_host_becomes_through_su_with_its_password(
    start_server: ServerFactory, procs: Procs, tmp_path: Path, password_rule: str, su_user: str
) -> None:
    """`ansible_become_method: su` on an agentless host: su runs on a terminal, its prompt is
    answered with the `become-password` credential the inventory names (never in argv), the
    command's secrets still reach it, and nothing of the dialogue (prompt, password) is in the
    output; a wrong password fails the run with su's own message; without a credential the job
    is refused at submission; a timeout ends the command as the user; the password is stored
    nowhere."""
    root = Path(tempfile.mkdtemp(prefix="easytask-sshd-su-"))
    root.chmod(0o755)
    sshd = start_sshd(root, procs)
    (root / "authorized_keys").chmod(0o644)
    su = "ansible_become=true ansible_become_method=su"
    inv = write(
        tmp_path / "inv.ini",
        f"""\
        [su]
        su1 {sshd.host_vars()} ansible_user={password_rule} {su} ansible_become_user={SU_USER} easytask_credential=su-pw
        su2 {sshd.host_vars()} ansible_user={password_rule} {su} ansible_become_user={SU_USER}
        su3 {sshd.host_vars()} ansible_user={password_rule} {su} ansible_become_user={SU_USER} easytask_credential=su-bad
        su4 {sshd.host_vars()} {su} ansible_become_user={SU_USER} easytask_credential=su-pw
        """,
    )  # fmt: skip
    server = start_server(inv)
    for name, value in (("su-pw", SU_PW), ("su-bad", "not-" + SU_PW)):
        made = server.cli("secrets", "set", name, "--kind", "become-password", input=value + "\n")
        assert made.returncode == 0, made.stdout + made.stderr
    command = 'id -un; echo "t=$TOKEN"; echo to-stderr >&2; pwd'
    run = _run(server, "su1", command, secrets={"TOKEN": "s3cr3t-value"})
    assert run["state"] == "success", (run["reason"], run["output"])
    home = pwd.getpwnam(SU_USER).pw_dir
    # on a terminal stderr comes with stdout; no CR, no prompt, no password
    assert run["output"] == [SU_USER, "t=****", "to-stderr", home], run["output"]
    assert run["ran_as"] == f"{SU_USER} (become, su)"
    lines = server.log_lines(run["id"])
    assert not any("assword" in ln["text"] or SU_PW in ln["text"] for ln in lines), lines
    # a login su asks no password of (root): the command starts at once
    as_root = _run(server, "su4", command, secrets={"TOKEN": "s3cr3t-value"})
    assert as_root["state"] == "success", (as_root["reason"], as_root["output"])
    assert as_root["output"] == [SU_USER, "t=****", "to-stderr", home]

    wrong = _run(server, "su3", "id -un")
    assert wrong["state"] == "failed", wrong
    system = [ln["text"] for ln in server.log_lines(wrong["id"]) if ln["stream"] == "system"]
    assert any("Authentication failure" in t for t in system), system
    assert wrong["output"] == []

    refused = server.http.post("/api/jobs", json={"pattern": "su2", "command": "id"})
    assert refused.status_code == 400
    assert "host 'su2': become method 'su' needs a become password" in refused.json()["error"]
    assert server.get("/api/runs", host="su2")["runs"] == []

    timed = _run(server, "su1", "sleep 300", timeout="2s")
    assert timed["state"] in ("failed", "terminated"), timed
    wait_until(lambda: not _sleeping(SU_USER), timeout=15, what="the sleep to end")
    for path in server.state_dir.rglob("*"):
        if path.is_file():
            assert SU_PW.encode() not in path.read_bytes(), path
    shutil.rmtree(root, ignore_errors=True)


# -- playbooks ----------------------------------------------------------------------------------


def test_playbook_become_at_play_and_task_level(
    start_server: ServerFactory,
    start_agent: AgentFactory,
    target_user: pwd.struct_passwd,
    tmp_path: Path,
) -> None:
    """`become`/`become_user` of the play apply to its tasks; a task's own keys win; the
    inventory's ansible_become_user wins over both (as in Ansible)."""
    inv = write(
        tmp_path / "inv.ini",
        """\
        [fleet]
        pb1
        pb2 ansible_become_user=nobody
        """,
    )
    server = start_server(inv)
    start_agent(server, "pb1", "--allow-become", f"{TARGET},nobody")
    start_agent(server, "pb2", "--allow-become", f"{TARGET},nobody")
    book = write(
        tmp_path / "become.yml",
        f"""\
        hosts: fleet
        become: true
        become_user: {TARGET}
        tasks:
          - name: as-play
            command: id -un
          - name: not-become
            command: id -un
            become: false
          - name: as-root
            command: id -un
            become_user: root
        """,
    )
    done = server.cli("play", str(book), "--format", "json", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    data = json.loads(done.stdout)
    got = {}
    for run in data["runs"]:
        lines = [ln["text"] for ln in server.log_lines(run["id"]) if ln["stream"] == "stdout"]
        got[(run["task"], run["host"])] = (lines, run["ran_as"])
    assert got == {
        ("as-play", "pb1"): ([TARGET], f"{TARGET} (become)"),
        ("as-play", "pb2"): (["nobody"], "nobody (become)"),
        ("not-become", "pb1"): (["root"], "root"),
        ("not-become", "pb2"): (["root"], "root"),
        ("as-root", "pb1"): (["root"], "root (become)"),
        ("as-root", "pb2"): (["nobody"], "nobody (become)"),
    }
    events = server.get("/api/audit", action="job.submit")["events"]
    assert events[0]["detail"]["become"] == {
        "as-play": {TARGET: ["pb1"], "nobody": ["pb2"]},
        "as-root": {"root": ["pb1"], "nobody": ["pb2"]},
    }


def test_play_become_flags_under_the_play_and_task_keys(
    start_server: ServerFactory,
    start_agent: AgentFactory,
    target_user: pwd.struct_passwd,
    tmp_path: Path,
) -> None:
    """`play -b --become-user U` makes the tasks become U; the play's and a task's own keys
    go over the flags (as in Ansible); the API takes them as `become`/`become_user`, a bad
    user is refused there and by the CLI before anything runs."""
    server = start_server(write(tmp_path / "inv.ini", "[fleet]\npb3\n"))
    start_agent(server, "pb3", "--allow-become", f"{TARGET},nobody")
    book = write(
        tmp_path / "flags.yml",
        """\
        hosts: fleet
        tasks:
          - name: flags
            command: id -un
          - name: task-user
            command: id -un
            become_user: nobody
          - name: task-off
            command: id -un
            become: false
        """,
    )

    def ran(*flags: str, path: Path = book) -> dict[str, tuple[list[str], str]]:
        done = server.cli("play", str(path), *flags, "--format", "json", timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return {
            run["task"]: (
                [ln["text"] for ln in server.log_lines(run["id"]) if ln["stream"] == "stdout"],
                run["ran_as"],
            )
            for run in json.loads(done.stdout)["runs"]
        }

    assert ran("-b", "--become-user", TARGET) == {
        "flags": ([TARGET], f"{TARGET} (become)"),
        "task-user": (["nobody"], "nobody (become)"),
        "task-off": (["root"], "root"),
    }
    events = server.get("/api/audit", action="job.submit")["events"]
    assert events[0]["detail"]["become"] == {
        "flags": {TARGET: ["pb3"]},
        "task-user": {"nobody": ["pb3"]},
    }
    # without the flags: nothing becomes (the task's user alone asks nothing, as in Ansible)
    assert ran() == {
        "flags": (["root"], "root"),
        "task-user": (["root"], "root"),
        "task-off": (["root"], "root"),
    }
    # --become-user alone means -b; the play's `become: false` goes over the flags
    off = write(
        tmp_path / "off.yml",
        "hosts: fleet\nbecome: false\ntasks:\n  - {name: a, command: id -un}\n",
    )
    assert ran("--become-user", TARGET, path=off) == {"a": (["root"], "root")}

    bad = server.cli("play", str(book), "--become-user", "a;b", timeout=60)
    assert bad.returncode == 2 and "--become-user: 'a;b' is not a user name" in bad.stderr
    text = book.read_text()
    answer = server.http.post(
        "/api/playbooks/run", json={"name": "f.yml", "text": text, "become_user": "a;b"}
    )
    assert answer.status_code == 400 and "'a;b' is not a user name" in answer.json()["error"]
    answer = server.http.post(
        "/api/playbooks/run", json={"name": "f.yml", "text": text, "become": "yes"}
    )
    assert answer.status_code == 400 and answer.json()["error"] == "become must be true or false"


# -- several servers ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_run_handed_to_the_server_holding_its_agent_still_becomes(
    postgres: PostgresCluster,
    start_server: ServerFactory,
    start_agent: AgentFactory,
    tmp_path: Path,
) -> None:
    """Submitted on A with become, executed by B (which holds the agent): B asks the agent for
    the user A resolved (the run's `become` event)."""
    url = postgres.new_database()
    a = start_server(None, "--db", url, state_dir=tmp_path / "a")
    b_state = tmp_path / "b"
    b_state.mkdir()
    for name in ("client_key", "client_key.pub"):  # servers on one database share this key
        shutil.copy(a.state_dir / name, b_state / name)
    b = start_server(None, "--db", url, state_dir=b_state)
    start_agent(b, "far1", "--allow-become", "nobody")
    wait_until(lambda: a.agent_status("far1") == "online", timeout=30, what="seen from A")
    run = _run(a, "far1", "id -un", become=True, become_user="nobody")
    assert run["state"] == "success", run["reason"]
    assert run["output"] == ["nobody"] and run["ran_as"] == "nobody (become)"
    kinds = [e["kind"] for e in a.get(f"/api/runs/{run['id']}")["events"]]
    assert "handed over" in kinds and kinds.count("become") == 1
    assert kinds.index("become") < kinds.index("handed over")  # stored before B claims it
