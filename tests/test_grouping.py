"""Folding hosts by output and writing host lists as inventory ranges (pure)."""

from __future__ import annotations

import random
import time

import pytest

from easytask.grouping import HostOutput, compact_hosts, fold, host_sort_key
from easytask.inventory.hostnames import expand_host_pattern


def read_back(text: str) -> list[str]:
    """The names a compact host list stands for, through the inventory's own range expansion."""
    names: list[str] = []
    for part in text.split(", "):
        expanded, port = expand_host_pattern(part)
        assert port is None
        names.extend(expanded)
    return names


def assert_round_trip(hosts: list[str]) -> str:
    text = compact_hosts(hosts)
    assert sorted(read_back(text)) == sorted(set(hosts)), text
    return text


@pytest.mark.parametrize(
    ("hosts", "text"),
    [
        ([f"web{i:02d}" for i in range(1, 41)] + ["db1"], "db1, web[01:40]"),
        (["web1", "web2", "web3", "web5"], "web[1:3], web5"),
        (["web1", "web2", "web3", "web5", "web6"], "web[1:3], web[5:6]"),
        (["web8", "web9", "web10", "web11"], "web[8:11]"),
        (["web08", "web09", "web10"], "web[08:10]"),
        (["web10", "web11", "web12"], "web[10:12]"),
        (["web001", "web002", "web1"], "web1, web[001:002]"),
        (["solo"], "solo"),
        (["db1"], "db1"),
        ([], ""),
        (["web01.example.com", "web02.example.com"], "web[01:02].example.com"),
        (["rack1-node01", "rack1-node02", "rack2-node01"], "rack1-node[01:02], rack2-node01"),
        (["10.0.0.1", "10.0.0.2", "10.0.0.3"], "10.0.0.[1:3]"),
        (["alpha", "beta", "web1", "web1"], "alpha, beta, web1"),
        (["node-a", "node-b"], "node-a, node-b"),
    ],
)
def test_compact_hosts(hosts: list[str], text: str) -> None:
    """Ranges for consecutive numbers, padding kept, gaps split, other names as they are."""
    assert compact_hosts(hosts) == text
    if hosts:
        assert_round_trip(hosts)


def test_names_a_range_could_not_read_back_stay_plain() -> None:
    """A name with a colon, a bracket or a comma is written as it is, never folded."""
    hosts = ["::1", "fe80::2", "odd[1]"]
    assert compact_hosts(hosts) == "::1, fe80::2, odd[1]"


def test_round_trip_of_random_fleets() -> None:
    """Any mix of padded, unpadded and plain names reads back the same through the inventory."""
    rng = random.Random(7)
    for _ in range(200):
        hosts = []
        for _ in range(rng.randint(1, 30)):
            n = rng.randint(0, 120)
            form = rng.choice(
                ["web{}", "web{:02d}", "web{:03d}", "db{}.lan", "r{}x{:02d}", "plain"]
            )
            hosts.append(form.format(n, rng.randint(0, 12)) if "{" in form else form)
        assert_round_trip(hosts)


def out(host: str, rc: int | None = 0, state: str = "success", *, so=(), se=()) -> HostOutput:
    return HostOutput(host, rc, state, list(so), list(se))


def test_fold_groups_same_output_and_exit() -> None:
    """Same output and exit code fold; the biggest group comes first, each in natural order."""
    runs = [
        out("web10", so=["ok"]),
        out("web2", so=["ok"]),
        out("db1", so=["ok"]),
        out("web3", 1, "failed", so=["ok"]),  # same output, another exit code
        out("web4", so=["other"]),
    ]
    groups = fold(runs)
    assert [g.hosts for g in groups] == [["db1", "web2", "web10"], ["web3"], ["web4"]]
    assert groups[0].as_dict() == {
        "hosts": ["db1", "web2", "web10"],
        "hosts_text": "db1, web2, web10",
        "exit_code": 0,
        "state": "success",
        "stdout": ["ok"],
        "stderr": [],
    }
    assert (groups[1].exit_code, groups[1].state) == (1, "failed")


def test_fold_one_host_and_no_output() -> None:
    """One host is one group; hosts with no output at all fold together."""
    assert [g.hosts for g in fold([out("a")])] == [["a"]]
    groups = fold([out("a"), out("b"), out("c", so=[""])])
    assert [g.hosts for g in groups] == [["a", "b"], ["c"]]
    assert groups[0].stdout == [] and groups[0].stderr == []


def test_fold_tells_streams_apart() -> None:
    """The same text on stderr is not the same output as on stdout; stderr alone folds too."""
    groups = fold([out("a", so=["x"]), out("b", se=["x"]), out("c", se=["x"])])
    assert [(g.hosts, g.stdout, g.stderr) for g in groups] == [
        (["b", "c"], [], ["x"]),
        (["a"], ["x"], []),
    ]
    # lines do not run together across a boundary
    assert len(fold([out("a", so=["ab", "c"]), out("b", so=["a", "bc"])])) == 2


def test_fold_unreachable_without_exit_code() -> None:
    """Runs that never ran fold by their state, with no exit code."""
    groups = fold([out("a", None, "unreachable"), out("b", None, "unreachable"), out("c")])
    assert [(g.hosts, g.exit_code, g.state) for g in groups] == [
        (["a", "b"], None, "unreachable"),
        (["c"], 0, "success"),
    ]


def test_ties_are_ordered_by_first_host() -> None:
    """Groups of one size come in the natural order of their first host."""
    groups = fold([out("web10", so=["1"]), out("web9", so=["2"]), out("app", so=["3"])])
    assert [g.hosts[0] for g in groups] == ["app", "web9", "web10"]


def test_thousand_hosts_by_thousand_lines_is_quick() -> None:
    """1,000 hosts x 1,000 lines fold in well under a second; 40 padded names read back."""
    common = [f"line {i} of the same output" for i in range(1000)]
    odd = [*common[:-1], "a different last line"]
    runs = [out(f"web{i:04d}", so=odd if i % 100 == 0 else common) for i in range(1, 1001)]
    started = time.perf_counter()
    groups = fold(runs)
    text = groups[0].hosts_text
    elapsed = time.perf_counter() - started
    assert [len(g.hosts) for g in groups] == [990, 10]
    assert groups[1].hosts_text == ", ".join(f"web{i:04d}" for i in range(100, 1001, 100))
    assert sorted(read_back(text)) == groups[0].hosts
    assert elapsed < 2.0


def test_tasks_never_fold_together() -> None:
    """A playbook's tasks keep their order and fold apart; the task is named in the dict."""
    runs = [
        HostOutput("b", 0, "success", ["x"], task="second"),
        HostOutput("a", 0, "success", ["x"], task="first"),
        HostOutput("c", 0, "success", ["x"], task="first"),
    ]
    groups = fold(runs)
    assert [(g.task, g.hosts) for g in groups] == [("second", ["b"]), ("first", ["a", "c"])]
    assert groups[0].as_dict()["task"] == "second"
    assert "task" not in fold([out("a")])[0].as_dict()
    one_task = [HostOutput(h, 0, "success", ["x"], task="echo x") for h in ("a", "b")]
    assert [(g.task, g.hosts) for g in fold(one_task)] == [("", ["a", "b"])]


def test_natural_sort_key() -> None:
    assert sorted(["web10", "web9", "db1", "web010"], key=host_sort_key) == [
        "db1",
        "web9",
        "web10",
        "web010",
    ]
