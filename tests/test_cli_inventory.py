"""`easytask inventory` prints what ansible-inventory and `ansible --list-hosts` print."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from easytask.cli import inventory as cli_inventory
from easytask.config import Settings
from easytask.errors import EasyTaskError, InventoryError, NoHostsMatched, UsageError
from tests.support import easytask_cmd

CASES = Path(__file__).parent / "cases" / "inventory"
SAMPLE = Path(__file__).parent.parent / "inventory"
SAMPLE_EXPECTED = CASES / "sample" / "expected"


def run(*argv: str, inventory: Path = SAMPLE) -> str:
    parser = argparse.ArgumentParser(prog="easytask")
    cli_inventory.add_parser(parser.add_subparsers())
    args = parser.parse_args(["inventory", *argv])
    out = io.StringIO()
    assert args.func(args, Settings(inventory=str(inventory)), out) == 0
    return out.getvalue()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--list"], (SAMPLE_EXPECTED / "list.json").read_text()),
        (["--list", "--format", "json"], (SAMPLE_EXPECTED / "list.json").read_text()),
        (["--graph"], (SAMPLE_EXPECTED / "graph-all.txt").read_text()),
        (["--graph", "prod"], (SAMPLE_EXPECTED / "graph-prod.txt").read_text()),
        (["--graph", "prod", "--vars"], (SAMPLE_EXPECTED / "graph-prod-vars.txt").read_text()),
        (["--hosts", "prod:!db"], "web1\nweb2\n"),
        (["--hosts", "*1", "--format", "text"], "web1\ndb1\n"),
        (["--hosts", "web", "--format", "json"], '[\n    "web1",\n    "web2"\n]\n'),
    ],
)
def test_inventory_command_output(argv: list[str], expected: str) -> None:
    """Each action prints what the matching Ansible command prints for the sample inventory."""
    assert run(*argv) == expected


def test_host_prints_merged_vars_like_ansible_inventory_host() -> None:
    """--host prints one host's merged vars as sorted JSON with indent 4."""
    hostvars = json.loads((SAMPLE_EXPECTED / "list.json").read_text())["_meta"]["hostvars"]
    output = run("--host", "db1")
    assert output == json.dumps(hostvars["db1"], sort_keys=True, indent=4) + "\n"


def test_host_accepts_a_pattern_for_one_host() -> None:
    """--host takes a pattern, as ansible-inventory does, if it selects exactly one host."""
    assert json.loads(run("--host", "web[1]"))["http_port"] == 8080


@pytest.mark.parametrize("name", ["ini_features", "yaml_features", "ranges"])
def test_list_of_other_inventories_matches_ansible(name: str) -> None:
    """-i picks the inventory; the output is Ansible's --list output for it."""
    spec = json.loads((CASES / name / "case.json").read_text())
    argv = [arg for source in spec["sources"] for arg in ("-i", str(CASES / name / source))]
    assert run(*argv, "--list") == (CASES / name / "expected" / "list.json").read_text()


def test_inventory_option_is_repeatable() -> None:
    """Several -i sources are merged in order, as with ansible -i a -i b."""
    output = run("-i", str(SAMPLE / "hosts.ini"), "-i", "extra1,extra2,", "--hosts", "all")
    assert output == "extra1\nextra2\nweb1\nweb2\ndb1\n"


@pytest.mark.parametrize(
    ("argv", "error", "message"),
    [
        (
            [],
            UsageError,
            "inventory: choose one of --list, --graph, --host NAME or --hosts PATTERN",
        ),
        (["--list", "--vars"], UsageError, "inventory: --vars only goes with --graph"),
        (["--list", "--format", "text"], UsageError, "inventory: --list prints json only"),
        (["--graph", "--format", "json"], UsageError, "inventory: --graph prints text only"),
        (["--hosts", "nope"], NoHostsMatched, "'nope' matches no host or group"),
        (["--host", "web"], NoHostsMatched, "--host needs exactly one host; 'web' matches 2"),
        (["--graph", "nope"], EasyTaskError, "no group named 'nope' (--graph needs a group name)"),
    ],
)
def test_inventory_command_errors_are_raised(
    argv: list[str], error: type[EasyTaskError], message: str
) -> None:
    """Mistakes raise EasyTask errors (exit code 2) for the CLI to print; nothing is printed."""
    with pytest.raises(error) as exc:
        run(*argv)
    assert exc.value.message == message
    assert exc.value.exit_code == 2


def test_broken_inventory_is_an_inventory_error() -> None:
    """A broken inventory file surfaces as InventoryError with its location."""
    with pytest.raises(InventoryError) as exc:
        run("-i", str(CASES / "errors" / "cycle.ini"), "--list")
    assert str(exc.value).endswith(
        "cycle.ini:8: group 'a' would be its own ancestor: a -> b -> c -> a"
    )


def test_warnings_go_to_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    """Inventory warnings are printed to stderr, not mixed into the output."""
    output = run("-i", str(CASES / "yaml_features" / "hosts.yml"), "--hosts", "odd")
    assert output == "odd1\n"
    assert "skipping unknown key 'extra' in group 'odd'" in capsys.readouterr().err


# -- --yaml, --export, --output, scripts and the implicit localhost -----------------------------


@pytest.mark.parametrize(
    ("argv", "golden"),
    [
        (["--list", "--yaml"], "list.yaml"),
        (["--list", "-y"], "list.yaml"),
        (["--list", "--export"], "list-export.json"),
        (["--list", "--export", "--yaml"], "list-export.yaml"),
    ],
)
def test_yaml_and_export_print_what_ansible_inventory_prints(argv: list[str], golden: str) -> None:
    """`--list --yaml`, `--export`: the text of `ansible-inventory --list --yaml/--export`."""
    assert run(*argv) == (SAMPLE_EXPECTED / golden).read_text().rstrip("\n") + "\n"


@pytest.mark.parametrize(
    ("argv", "golden", "tail"),
    [(["--list"], "list.json", ""), (["--list", "--yaml"], "list.yaml", "\n")],
)
def test_output_writes_the_file_as_ansible_does(
    tmp_path: Path, argv: list[str], golden: str, tail: str
) -> None:
    """--output FILE: the same text in the file (JSON without a final newline, as Ansible
    writes it), nothing on standard output."""
    target = tmp_path / "out"
    assert run(*argv, "--output", str(target)) == ""
    assert target.read_text() == (SAMPLE_EXPECTED / golden).read_text().rstrip("\n") + tail


@pytest.mark.parametrize("flag", [["--yaml"], ["--export"], ["--output", "x"]])
def test_list_only_flags_need_list(flag: list[str]) -> None:
    with pytest.raises(UsageError) as exc:
        run("--graph", *flag)
    assert exc.value.message == f"inventory: {flag[0]} only goes with --list"


def test_output_to_a_directory_that_does_not_exist_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write .*/nope/out: No such file or directory"):
        run("--list", "--output", str(tmp_path / "nope" / "out"))


@pytest.mark.parametrize("name", ["script", "script_dir"])
def test_implicit_localhost_has_ansibles_variables(name: str) -> None:
    """`--host localhost` on an inventory without it: Ansible's implicit localhost (local
    connection, the interpreter running the command), with the `all` variables."""
    spec = json.loads((CASES / name / "case.json").read_text())
    expected = json.loads((CASES / name / "expected" / "host-localhost.json").read_text())
    expected["ansible_python_interpreter"] = sys.executable
    inventory = CASES / name / spec["sources"][0]
    assert json.loads(run("--host", "localhost", inventory=inventory)) == expected
    assert run("--hosts", "all:localhost", inventory=inventory).splitlines()[-1] == "localhost"
    assert "localhost" not in run("--hosts", "all", inventory=inventory).split()
    assert "localhost" not in json.loads(run("--list", inventory=inventory))["_meta"]["hostvars"]


def test_script_inventory_through_the_real_cli(tmp_path: Path) -> None:
    """The installed command runs a script given with -i, and inventory_timeout applies."""
    case = CASES / "script"
    done = subprocess.run(
        easytask_cmd("inventory", "-i", str(case / "inventory.sh"), "--list"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (case / "expected" / "list.json").read_text()
    slow = tmp_path / "slow.sh"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    env = dict(os.environ, EASYTASK_INVENTORY_TIMEOUT="1s")
    done = subprocess.run(
        easytask_cmd("inventory", "-i", str(slow), "--list"),
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    assert f"inventory script {slow} --list did not finish within 1s (inventory_timeout)" in (
        done.stderr
    )
