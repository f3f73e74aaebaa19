"""Host patterns select the hosts, in the order, that `ansible PATTERN --list-hosts` gives.

tests/cases/inventory/*/expected/patterns.json holds Ansible's answers (see regen.py there).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from easytask.errors import NoHostsMatched, PatternError
from easytask.inventory import Inventory, load_inventory
from easytask.inventory.patterns import order_parts, split_pattern, split_subscript
from easytask.transport.invscript import script_runner

CASES = Path(__file__).parent / "cases" / "inventory"


def golden_patterns() -> list[tuple[str, str, list[str]]]:
    out = []
    for case in sorted(p for p in CASES.iterdir() if (p / "expected" / "patterns.json").is_file()):
        for pattern, hosts in json.loads((case / "expected" / "patterns.json").read_text()).items():
            out.append((case.name, pattern, hosts))
    return out


def load_case(name: str) -> Inventory:
    spec = json.loads((CASES / name / "case.json").read_text())
    sources = [s if "," in s else str(CASES / name / s) for s in spec["sources"]]
    return load_inventory(sources, script_runner(30))


@pytest.mark.parametrize(("name", "pattern", "hosts"), golden_patterns())
def test_pattern_selects_what_ansible_selects(name: str, pattern: str, hosts: list[str]) -> None:
    """A pattern gives Ansible's hosts in Ansible's order."""
    assert load_case(name).select(pattern) == hosts


@pytest.mark.parametrize(
    ("pattern", "parts"),
    [
        ("web", ["web"]),
        ("web:db", ["web", "db"]),
        ("web:&prod:!web3", ["web", "&prod", "!web3"]),
        ("web, db ,app", ["web", "db", "app"]),
        ("web db", ["web", "db"]),
        ("web:db,app", ["web:db", "app"]),  # with a comma, ':' does not separate
        ("web[1:3]", ["web[1:3]"]),
        ("web*[0:2]:db", ["web*[0:2]", "db"]),
        ("~(web|db)[0-9]+:app", ["~(web|db)[0-9]+", "app"]),
        ("2001:db8::1", ["2001:db8::1"]),
        ("web1:2222", ["web1:2222"]),
    ],
)
def test_patterns_split_into_parts(pattern: str, parts: list[str]) -> None:
    """Parts are split at ',' or else at ':' outside brackets, keeping addresses whole."""
    assert split_pattern(pattern) == parts


@pytest.mark.parametrize(
    ("parts", "ordered"),
    [
        (["!a", "&b", "c", "!d", "e"], ["c", "e", "&b", "!a", "!d"]),
        (["!a"], ["all", "!a"]),
        (["&a", "&b"], ["all", "&a", "&b"]),
    ],
)
def test_parts_are_applied_unions_first(parts: list[str], ordered: list[str]) -> None:
    """Unions come first, then intersections, then exclusions; `all` if no union is given."""
    assert order_parts(parts) == ordered


@pytest.mark.parametrize(
    ("part", "split"),
    [
        ("web", ("web", None)),
        ("web[0]", ("web", (0, None))),
        ("web[-1]", ("web", (-1, None))),
        ("web[1:3]", ("web", (1, 3))),
        ("web[5:]", ("web", (5, -1))),
        ("web[1-2]", ("web", (1, 2))),
        ("web[-1:]", ("web[-1:]", None)),  # not a subscript: a glob
        ("~web[0]", ("~web[0]", None)),  # regexes have no subscripts
    ],
)
def test_subscripts_are_split_off(part: str, split: tuple[str, object]) -> None:
    """A trailing [i], [a:b] or [a:] is a subscript; a regex keeps its brackets."""
    assert split_subscript(part) == split


def test_nested_groups_are_walked_breadth_first() -> None:
    """Hosts of nested groups come level by level, each level in child order."""
    inventory = load_case("directory")
    # Ansible's own order varies from run to run here; breadth-first is one of its orders.
    assert inventory.select("all") == [
        "cache1", "mon1", "mq1", "edge1", "edge2", "deep1", "db1", "db2", "web1", "web2", "web3",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "error", "message"),
    [
        ("", PatternError, "the host pattern is empty"),
        (" , ", PatternError, "the host pattern ' , ' has no host or group in it"),
        ("nope", NoHostsMatched, "'nope' matches no host or group"),
        ("web:nope", NoHostsMatched, "'nope' in host pattern 'web:nope' matches no host or group"),
        ("web:!nope", NoHostsMatched, "'!nope' in host pattern 'web:!nope' matches no host or group"),
        ("web:&nope", NoHostsMatched, "'&nope' in host pattern 'web:&nope' matches no host or group"),
        ("web:db,app", NoHostsMatched, "'web:db' in host pattern 'web:db,app' matches no host or group (a pattern with ',' is split at ',' only, not at ':')"),
        ("web[12]", NoHostsMatched, "'web[12]' is out of range: 'web' matches 3 hosts"),
        ("db:web[5:]", NoHostsMatched, "'web[5:]' in host pattern 'db:web[5:]' is out of range: 'web' matches 3 hosts"),
        ("eu:&us", NoHostsMatched, "host pattern 'eu:&us' matched no hosts"),
        ("web:!web", NoHostsMatched, "host pattern 'web:!web' matched no hosts"),
        ("web[", PatternError, "unbalanced '[' in host pattern 'web['"),
        ("web]x", PatternError, "unbalanced ']' in host pattern 'web]x'"),
        ("web:!", PatternError, "'!' in host pattern 'web:!' needs a host or group name after it"),
        ("&", PatternError, "'&' needs a host or group name after it"),
        ("~a(b", PatternError, "bad regular expression in '~a(b': missing ), unterminated subpattern at position 1"),
    ],
)  # fmt: skip
def test_bad_patterns_name_the_bad_part(pattern: str, error: type[Exception], message: str) -> None:
    """A part that matches nothing, or cannot be read, is named in the error."""
    with pytest.raises(error) as exc:
        load_case("patterns").select(pattern)
    assert type(exc.value) is error
    assert str(exc.value) == message
    assert getattr(exc.value, "exit_code", None) == 2


def test_an_empty_group_is_not_an_unknown_name() -> None:
    """An existing group without hosts is not an error inside a larger pattern, as in Ansible."""
    inventory = load_case("ini_features")
    assert inventory.select("late:empty") == ["lonely1"]
    with pytest.raises(NoHostsMatched, match="matched no hosts"):
        inventory.select("empty")
