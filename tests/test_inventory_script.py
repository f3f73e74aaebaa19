"""Inventory scripts: their JSON read as Ansible's script plugin reads it (pure), and the runner
that executes them (no shell, a clean environment, a time limit, bounded error output).

What the cases under tests/cases/inventory/script*/ give is checked against ansible-inventory's
own output in tests/test_inventory.py."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from easytask.errors import InventoryError
from easytask.inventory import UnsafeText, load_inventory
from easytask.inventory.model import InventoryData
from easytask.inventory.script import parse_script, read_script_json
from easytask.transport.invscript import (
    KEPT_VARIABLES,
    STDERR_SHOWN,
    run_script,
    script_environment,
    script_runner,
)
from tests.support import wait_until


class Printed:
    """What a script prints: `--list` output and the `--host NAME` outputs, with the calls made."""

    def __init__(self, listed: object, hosts: dict[str, object] | None = None) -> None:
        self.listed = listed if isinstance(listed, bytes) else json.dumps(listed).encode()
        self.hosts = hosts or {}
        self.calls: list[list[str]] = []

    def __call__(self, path: str, args: Sequence[str]) -> bytes | None:
        self.calls.append(list(args))
        if args[0] == "--list":
            return self.listed
        out = self.hosts.get(args[1], "")
        return out if isinstance(out, bytes) else (out and json.dumps(out)).encode()


def parsed(run: Printed) -> InventoryData:
    data = InventoryData()
    assert parse_script("/inv/cloud.py", run, data)
    data.reconcile()
    return data


def test_groups_hosts_children_vars_and_meta_hostvars() -> None:
    """Groups with hosts, vars and children, a bare list as a group's hosts, _meta.hostvars."""
    data = parsed(
        Printed(
            {
                "web": {"hosts": ["w1", "w2"], "vars": {"port": 80}},
                "db": ["d1"],
                "prod": {"children": ["web", "db"]},
                "_meta": {"hostvars": {"w1": {"ansible_host": "10.0.0.1"}, "nobody": {"x": 1}}},
            }
        )
    )
    assert data.groups["web"].hosts == ["w1", "w2"]
    assert data.groups["web"].vars == {"port": 80}
    assert data.groups["db"].hosts == ["d1"]
    assert data.groups["prod"].children == ["web", "db"]
    assert data.groups["all"].children == ["ungrouped", "prod"]
    assert data.hosts["w1"].vars == {"ansible_host": "10.0.0.1"}
    assert "nobody" not in data.hosts  # hostvars of a host no group lists are ignored


def test_without_meta_each_host_is_asked_with_host() -> None:
    """No _meta: `--host NAME` once per host; empty output means no variables."""
    run = Printed({"g": ["a", "b"]}, {"a": {"v": 1}, "b": ""})
    data = parsed(run)
    assert data.hosts["a"].vars == {"v": 1}
    assert data.hosts["b"].vars == {}
    assert sorted(map(tuple, run.calls)) == [("--host", "a"), ("--host", "b"), ("--list",)]


def test_with_meta_no_host_call_is_made() -> None:
    run = Printed({"g": ["a"], "_meta": {"hostvars": {}}})
    parsed(run)
    assert run.calls == [["--list"]]


def test_short_form_group_is_a_host_named_after_it_with_unsafe_values() -> None:
    """A group mapping without hosts/vars/children: Ansible's old form, never templated."""
    data = parsed(Printed({"odd": {"region": "{{ eu }}", "n": 1}}))
    assert data.groups["odd"].hosts == ["odd"]
    assert data.groups["odd"].vars == {"region": "{{ eu }}", "n": 1}
    assert isinstance(data.groups["odd"].vars["region"], UnsafeText)


def test_ansible_unsafe_marker_is_an_unsafe_string() -> None:
    data = parsed(
        Printed({"g": ["a"], "_meta": {"hostvars": {"a": {"t": {"__ansible_unsafe": "{{ x }}"}}}}})
    )
    assert isinstance(data.hosts["a"].vars["t"], UnsafeText)


@pytest.mark.parametrize(
    ("listed", "message"),
    [
        (
            b'{"web": {"hosts": ["w1",]}}',
            "/inv/cloud.py --list:1:25: the output is not valid JSON: Expecting value",
        ),
        (
            b'{\n  "web": [\n    "w1"\n  ]\n  "db": []\n}',
            "/inv/cloud.py --list:5:3: the output is not valid JSON: Expecting ',' delimiter",
        ),
        (b"", "/inv/cloud.py --list:1:1: the output is not valid JSON: Expecting value"),
        (b'{"a": "\xff"}', "/inv/cloud.py --list:1: the output is not valid UTF-8"),
        (b"[]", "/inv/cloud.py --list: the output must be a JSON object, not a list"),
        (b'{"_meta": []}', "'_meta' must be an object, not a list"),
        (b'{"_meta": {}}', "'_meta.hostvars' must be an object, not null"),
        (b'{"g": {"hosts": "a"}}', "'g.hosts' must be a list, not a string"),
        (b'{"g": {"vars": [1]}}', "'g.vars' must be an object, not a list"),
        (b'{"g": {"children": "c"}}', "'g.children' must be a list, not a string"),
        (
            b'{"g": ["a"], "_meta": {"hostvars": {"a": [1]}}}',
            "'_meta.hostvars.a': host variables must be an object, not a list",
        ),
        (b'{"g": {"hosts": [1]}}', "a host name must be a string"),
    ],
)
def test_bad_output_says_what_and_where(listed: bytes, message: str) -> None:
    """Bad JSON names the command, line and column; a wrong shape names the key."""
    with pytest.raises(InventoryError) as err:
        parsed(Printed(listed))
    assert message in str(err.value)


def test_bad_host_output_names_the_host() -> None:
    with pytest.raises(
        InventoryError, match=r"^/inv/cloud.py --host a:1:2: the output is not valid JSON"
    ):
        parsed(Printed({"g": ["a"]}, {"a": b"{oops"}))
    with pytest.raises(
        InventoryError, match=r"--host a: host variables must be an object, not a list"
    ):
        parsed(Printed({"g": ["a"]}, {"a": [1]}))


def test_read_script_json_position() -> None:
    with pytest.raises(InventoryError) as err:
        read_script_json(b"{\n\n   nope}", "x --list")
    assert err.value.location is not None
    assert (err.value.location.line, err.value.location.col) == (3, 4)


# -- the runner: real scripts ------------------------------------------------------------------


def script(tmp_path: Path, body: str, name: str = "inv.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_an_executable_file_is_run_and_a_plain_one_is_read(tmp_path: Path) -> None:
    """load_inventory runs an executable file; the same text without the x bit is read as INI."""
    path = script(tmp_path, 'echo \'{"web": ["w1"]}\'\n')
    assert load_inventory(path, script_runner(10)).groups["web"].hosts == ["w1"]
    with pytest.raises(
        InventoryError, match="is an inventory script, and scripts are not run here"
    ):
        load_inventory(path)
    (tmp_path / "plain.ini").write_text("[web]\nw9\n")
    assert load_inventory(tmp_path / "plain.ini", script_runner(10)).groups["web"].hosts == ["w9"]


def test_an_executable_file_the_system_cannot_run_is_read_as_a_file(tmp_path: Path) -> None:
    """No `#!` line: exec fails with ENOEXEC, and Ansible goes on with its other plugins."""
    path = tmp_path / "hosts"
    path.write_text("[web]\nw1\n")
    path.chmod(0o755)
    assert run_script(str(path), ["--list"], 10) is None
    assert load_inventory(path, script_runner(10)).groups["web"].hosts == ["w1"]


def test_non_zero_exit_shows_the_end_of_stderr(tmp_path: Path) -> None:
    path = script(
        tmp_path,
        f"printf 'x%.0s' $(seq {STDERR_SHOWN * 2}) >&2\necho 'API token expired' >&2\nexit 3\n",
    )
    with pytest.raises(InventoryError) as err:
        run_script(str(path), ["--list"], 10)
    text = str(err.value)
    assert text.startswith(
        f"inventory script {path} --list exited with code 3; its standard error:\n..."
    )
    assert text.endswith("API token expired")
    assert len(text) < STDERR_SHOWN + 200


def test_failure_without_stderr_says_so(tmp_path: Path) -> None:
    path = script(tmp_path, "exit 1\n")
    with pytest.raises(
        InventoryError, match="exited with code 1 and wrote nothing on standard error"
    ):
        run_script(str(path), ["--list"], 10)


def test_timeout_kills_the_script_and_its_children(tmp_path: Path) -> None:
    """Past the time limit the whole process group is killed and the error says so."""
    pidfile = tmp_path / "child.pid"
    path = script(tmp_path, f"sleep 60 &\necho $! > {pidfile}\nwait\n")
    started = time.monotonic()
    with pytest.raises(InventoryError, match=r"did not finish within 0.5s \(inventory_timeout\)"):
        run_script(str(path), ["--list"], 0.5)
    assert time.monotonic() - started < 10
    child = int(pidfile.read_text())

    def gone() -> bool:  # no such process, or a zombie nobody reaped yet: killed either way
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"

    wait_until(gone, timeout=10, what="the script's child to be killed")


def test_clean_environment_and_no_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The script sees only the documented variables (no token, no database URL), and its
    arguments reach it as they are: no shell reads them."""
    monkeypatch.setenv("EASYTASK_TOKEN", "secret-token")
    monkeypatch.setenv("EASYTASK_DB", "postgresql://u:pw@db/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    dump = tmp_path / "env.py"
    dump.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "print(json.dumps({'g': ['h'], '_meta': {'hostvars': {'h': "
        "{'env': dict(os.environ), 'argv': sys.argv[1:]}}}}))\n"
    )
    dump.chmod(0o755)
    out = run_script(str(dump), ["--host", "$(touch pwned); `id`"], 10)
    assert out is not None
    seen = json.loads(out)["_meta"]["hostvars"]["h"]
    assert seen["argv"] == ["--host", "$(touch pwned); `id`"]
    assert not (tmp_path / "pwned").exists()
    env = {k: v for k, v in seen["env"].items() if k not in ("PWD", "SHLVL", "_", "LC_CTYPE")}
    assert set(env) <= set(KEPT_VARIABLES)
    assert "secret-token" not in out.decode() and "aws-secret" not in out.decode()
    assert env["PATH"] == os.environ["PATH"]


def test_script_environment_defaults() -> None:
    assert script_environment({}) == {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    assert script_environment({"HOME": "/h", "EASYTASK_TOKEN": "t", "LANG": ""}) == {
        "HOME": "/h",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }


def test_a_script_without_the_x_bit_gets_a_hint(tmp_path: Path) -> None:
    """A `#!` file that is not executable is read as INI, as Ansible does; its error says why."""
    path = tmp_path / "cloud.py"
    path.write_text("#!/usr/bin/env python3\nimport json\nprint(json.dumps({}))\n")
    with pytest.raises(InventoryError, match=r"only when it is executable: chmod \+x it\)$"):
        load_inventory(path, script_runner(10))
