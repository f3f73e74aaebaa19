"""How an inventory host is reached: `easytask_connection: auto` and the `ansible_*` variables."""

from __future__ import annotations

from typing import Any

import pytest

from easytask.errors import InventoryError, UsageError
from easytask.inventory import load_inventory
from easytask.plan import (
    SSHOptions,
    connection_of,
    connection_warnings,
    plan_adhoc,
    plan_playbook,
    ssh_options,
)
from easytask.plan.connection import Hop
from easytask.playbook import parse_playbook


@pytest.mark.parametrize(
    ("hostvars", "agents", "expected"),
    [
        ({}, (), "ssh"),  # an Ansible inventory, no agent: reached over SSH
        ({}, ("h",), "agent"),  # the host enrolled an agent: through it
        ({"easytask_connection": "auto"}, ("h",), "agent"),
        ({"easytask_connection": "agent"}, (), "agent"),  # explicit: kept
        ({"easytask_connection": "ssh"}, ("h",), "ssh"),  # explicit: kept
        ({"ansible_connection": "winrm"}, ("h",), "agent"),  # its agent, not WinRM
        ({"ansible_connection": "paramiko"}, (), "ssh"),
        ({"ansible_connection": "smart"}, (), "ssh"),
    ],
)
def test_connection_of(hostvars: dict[str, Any], agents: tuple[str, ...], expected: str) -> None:
    assert connection_of("h", hostvars, agents) == expected


def test_an_unmodified_ansible_host_is_its_ssh_options() -> None:
    hv = {
        "ansible_host": "10.0.0.5",
        "ansible_port": "2222",
        "ansible_user": "deploy",
        "ansible_ssh_private_key_file": "~/.ssh/deploy",
    }
    assert ssh_options("web1", hv) == SSHOptions("10.0.0.5", 2222, "deploy", "~/.ssh/deploy")
    assert ssh_options("web1", {}) == SSHOptions("web1", 22, None, None)
    old = {"ansible_ssh_host": "h", "ansible_ssh_port": 23, "ansible_ssh_user": "u"}
    assert ssh_options("x", old) == SSHOptions("h", 23, "u", None)


@pytest.mark.parametrize(
    ("common", "extra", "expected"),
    [
        ("-o ProxyJump=jump@bastion:2200", "", {"jumps": (Hop("bastion", 2200, "jump"),)}),
        ("-o 'ProxyJump bastion'", "", {"jumps": (Hop("bastion"),)}),
        ("-oProxyJump=a,b@c:3", "", {"jumps": (Hop("a"), Hop("c", 3, "b"))}),
        ("-J u@[::1]:2022", "", {"jumps": (Hop("::1", 2022, "u"),)}),
        ("-o ProxyJump=none", "", {"jumps": ()}),
        ("-o Port=2022 -o User=ops", "", {"port": 2022, "user": "ops"}),
        ("-p 2023 -l root", "", {"port": 2023, "user": "root"}),
        ("-p2024", "-p 99", {"port": 2024}),  # the first value wins, as in OpenSSH
        ("-o IdentityFile=/k", "", {"key_file": "/k"}),
        (
            "-o StrictHostKeyChecking=no -C",
            "-o ControlMaster=auto",
            {
                "ignored": (
                    "ansible_ssh_common_args (-o StrictHostKeyChecking)",
                    "ansible_ssh_common_args (-C)",
                    "ansible_ssh_extra_args (-o ControlMaster)",
                )
            },
        ),
    ],
)
def test_ssh_arguments(common: str, extra: str, expected: dict[str, Any]) -> None:
    hv = {"ansible_ssh_common_args": common, "ansible_ssh_extra_args": extra}
    got = ssh_options("h", hv)
    base = SSHOptions("h")
    for name, value in expected.items():
        assert getattr(got, name) == value, name
    untouched = set(SSHOptions.__dataclass_fields__) - set(expected) - {"host"}
    for name in untouched:
        assert getattr(got, name) == getattr(base, name), name


def test_inventory_variables_win_over_ssh_arguments() -> None:
    """As Ansible passes `ansible_port`/`ansible_user` before the extra arguments."""
    hv = {"ansible_port": 22, "ansible_user": "a", "ansible_ssh_common_args": "-p 99 -l b"}
    assert (ssh_options("h", hv).port, ssh_options("h", hv).user) == (22, "a")


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        (
            {"ansible_connection": "winrm"},
            "host 'db9': ansible_connection 'winrm' is not supported",
        ),
        ({"ansible_connection": "docker"}, "host 'db9': ansible_connection 'docker'"),
        ({"ansible_connection": "local"}, "host 'db9': ansible_connection 'local' would run"),
        ({"ansible_password": "hunter2"}, "easytask secrets set NAME --kind ssh-key"),
        ({"ansible_ssh_pass": "hunter2"}, "easytask_credential: NAME"),
        ({"ansible_become_password": "hunter2"}, "--kind become-password"),
        ({"ansible_become_pass": "hunter2"}, "host 'db9': ansible_become_pass is a password"),
        (
            {"ansible_ssh_common_args": "-o ProxyCommand='ssh -W %h:%p b'"},
            "ProxyCommand is not supported",
        ),
        ({"ansible_ssh_extra_args": "-o ProxyJump=@b"}, "jump host '@b' is not"),
        ({"ansible_ssh_extra_args": "-o ProxyJump=b:x"}, "port 'x' is not 1-65535"),
        ({"ansible_ssh_extra_args": "-o 'ProxyJump"}, "ansible_ssh_extra_args: No closing"),
        ({"ansible_ssh_extra_args": "-p"}, "-p needs a value"),
        ({"ansible_port": "http"}, "ansible_port: port 'http' is not 1-65535"),
        ({"easytask_connection": "winrm"}, "easytask_connection must be one of auto, agent"),
    ],
)
def test_what_cannot_be_honoured_is_refused_naming_the_host(
    hostvars: dict[str, Any], message: str
) -> None:
    with pytest.raises(InventoryError) as err:
        connection_of("db9", hostvars)
    assert message in str(err.value)
    assert "db9" in str(err.value)
    assert "hunter2" not in str(err.value)


def test_unhonoured_variables_are_warnings_once_per_host_and_variable() -> None:
    host_vars = {
        "a": {"ansible_ssh_pipelining": True, "ansible_python_interpreter": "/usr/bin/python3"},
        "b": {"ansible_ssh_executable": "/opt/ssh", "ansible_become_exe": "doas"},
        "c": {"ansible_ssh_pipelining": True},  # through its agent: nothing to say
    }
    assert connection_warnings(host_vars, {"a": "ssh", "b": "ssh", "c": "agent"}) == [
        "host a: ansible_ssh_pipelining is not honoured by EasyTask (ignored)",
        "host b: ansible_become_exe is not honoured by EasyTask (ignored)",
        "host b: ansible_ssh_executable is not honoured by EasyTask (ignored)",
    ]


def test_planning_knows_the_hosts_with_an_agent(tmp_path: Any) -> None:
    """Ad hoc and playbook plans reach a host through its agent only if it enrolled one; a
    playbook plan holds its warnings, once per host and variable whatever its tasks."""
    path = tmp_path / "hosts.ini"
    path.write_text("[web]\nweb1\nweb2 ansible_ssh_pipelining=true\n")
    inventory = load_inventory(str(path)).with_extra_hosts({}, agents={"web1"})
    runs = plan_adhoc(inventory, "web", "uptime")
    assert [(r.host, r.connection) for r in runs] == [("web1", "agent"), ("web2", "ssh")]
    assert {r.connection for r in plan_adhoc(load_inventory(str(path)), "web", "true")} == {"ssh"}
    book = parse_playbook(
        "name: p\nhosts: web\ntasks:\n  - name: a\n    command: uptime\n"
        "  - name: b\n    command: uptime\n",
        "p.yml",
    )
    plan = plan_playbook(book, inventory)
    assert (plan.connection("web1"), plan.connection("web2")) == ("agent", "ssh")
    assert plan.warnings == (
        "host web2: ansible_ssh_pipelining is not honoured by EasyTask (ignored)",
    )


def test_the_implicit_localhost_needs_an_agent_of_that_name(tmp_path: Any) -> None:
    """Ansible's implicit localhost is `ansible_connection: local`: refused, never run on the
    server, unless an agent named `localhost` enrolled."""
    path = tmp_path / "hosts.ini"
    path.write_text("web1\n")
    with pytest.raises(InventoryError) as err:
        plan_adhoc(load_inventory(str(path)), "localhost", "id")
    assert "host 'localhost': ansible_connection 'local' would run" in str(err.value)
    merged = load_inventory(str(path)).with_extra_hosts({}, agents={"localhost"})
    assert [r.connection for r in plan_adhoc(merged, "localhost", "id")] == ["agent"]


def test_local_connection_only_where_the_server_allows_it(tmp_path: Any) -> None:
    """`ansible_connection: local` is the server's own host where the admin allows it (the
    refusal names the setting otherwise); an enrolled agent of the host's name still wins, and a
    password in clear is refused as for SSH hosts."""
    local = {"ansible_connection": "local"}
    with pytest.raises(InventoryError) as err:
        connection_of("me1", local)
    assert "--allow-local-connection" in str(err.value)
    assert "EASYTASK_ALLOW_LOCAL_CONNECTION" in str(err.value)
    assert connection_of("me1", local, allow_local=True) == "local"
    assert connection_of("me1", local, {"me1"}, allow_local=True) == "agent"
    with pytest.raises(InventoryError, match="ansible_become_pass is a password in clear"):
        connection_of("me1", {**local, "ansible_become_pass": "x"}, allow_local=True)
    path = tmp_path / "hosts.ini"
    path.write_text("web1\n")
    inventory = load_inventory(str(path))
    inventory.local_allowed = True
    assert [r.connection for r in plan_adhoc(inventory, "localhost", "id")] == ["local"]
    book = parse_playbook(
        "name: p\nhosts: localhost\nbecome: true\ntasks:\n  - name: a\n    command: id\n",
        "p.yml",
    )
    assert plan_playbook(book, inventory).connection("localhost") == "local"
    path.write_text("me1 ansible_connection=local ansible_become_method=su\n")
    su = load_inventory(str(path))
    su.local_allowed = True
    with pytest.raises(UsageError, match="'su' is not available on the server's own host"):
        plan_playbook(
            parse_playbook(
                "name: p\nhosts: me1\nbecome: true\ntasks:\n  - name: a\n    command: id\n",
                "p.yml",
            ),
            su,
        )
