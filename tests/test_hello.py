"""The schema an agent's hello is checked against at the server."""

from __future__ import annotations

import json

import pytest

from easytask.agent import facts
from easytask.scheduler.hello import BadHello, check_facts, check_hello, clean_facts, stored_facts


def test_a_real_agents_hello_passes_unchanged() -> None:
    """What `easytask agent` sends follows the schema as it is."""
    sent = {
        **facts.gather(2),
        "policy": {
            "run_as": None,
            "allow": ["uptime"],
            "files": False,
            "file_dirs": [],
            "slots": 4,
            "become": ["deploy"],
        },
        "user": "root",
    }
    assert check_facts(sent) == {**sent, "load": [float(x) for x in sent["load"]]}
    fields = check_hello(
        {"name": "a", "slots": 3, "groups": ["web"], "version": "1", "facts": sent}
    )
    assert (fields["slots"], fields["groups"]) == (3, "web")
    assert json.loads(fields["facts"])["cpus"] == sent["cpus"]


@pytest.mark.parametrize(
    ("bad", "where"),
    [
        ({"load": {"a": 1}}, "facts.load"),
        ({"load": [1, "x"]}, "facts.load[1]"),
        ({"load": [1, 2, 3, 4]}, "facts.load"),
        ({"cpus": "8"}, "facts.cpus"),
        ({"cpus": True}, "facts.cpus"),
        ({"os": ["Linux"]}, "facts.os"),
        ({"hostname": "x" * 300}, "facts.hostname"),
        ({"extra": {"nested": 1}}, "facts.extra"),
        ({"policy": "all"}, "facts.policy"),
        ({f"k{i}": i for i in range(100)}, "at most 64"),
    ],
)
def test_malformed_facts_are_refused_naming_the_field(bad: dict[str, object], where: str) -> None:
    with pytest.raises(BadHello, match=where.replace("[", r"\[").replace("]", r"\]")):
        check_facts(bad)


def test_bad_slots_groups_and_shapes_are_refused() -> None:
    for hello in ({"slots": "many"}, {"slots": -1}, {"groups": "web"}, {"groups": [1]}, []):
        with pytest.raises(BadHello):
            check_hello(hello)
    assert check_hello({})["slots"] == 4


def test_stored_facts_written_before_the_schema_cannot_break_a_page() -> None:
    """A record holding malformed facts is shown without them."""
    assert clean_facts({"load": {"a": 1}, "cpus": 2}) == {"cpus": 2}
    assert stored_facts('{"load": {"a": 1}, "os": "Linux 6"}') == {"os": "Linux 6"}
    assert stored_facts("not json") == {}
    assert stored_facts('["a"]') == {}
