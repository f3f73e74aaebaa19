"""`easytask inventory` prints what ansible-inventory and `ansible --list-hosts` print."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from easytask.cli import inventory as cli_inventory
from easytask.config import Settings
from easytask.errors import EasyTaskError, InventoryError, NoHostsMatched, UsageError

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
