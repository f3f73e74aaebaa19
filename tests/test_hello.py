"""The schema an agent's hello is checked against at the server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from easytask.agent import facts
from easytask.agent.main import MAX_BEAT_EVERY, Agent, AgentConfig, keepalive_for
from easytask.headroom import Limits
from easytask.scheduler.heartbeats import BEATS_PER_SECOND, beat_pace
from easytask.scheduler.hello import (
    BadHello,
    check_beat,
    check_facts,
    check_hello,
    clean_facts,
    stored_facts,
)


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
        **facts.headroom(Path("/proc"), 2, 4, Limits(2.0, 256 << 20)),
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
        ({"mem_available": -1}, "facts.mem_available"),
        ({"mem_available": 1.5}, "facts.mem_available"),
        ({"min_free_memory": "256M"}, "facts.min_free_memory"),
        ({"max_load": "2"}, "facts.max_load"),
        ({"max_load": float("nan")}, "facts.max_load"),
        ({"free_slots": -2}, "facts.free_slots"),
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


def test_a_heartbeat_keeps_its_headroom_fields_only() -> None:
    """A heartbeat is checked as the hello's facts are, and carries nothing but headroom: an
    agent cannot rename itself, change its policy or declare itself busy in one."""
    beat = facts.headroom(Path("/proc"), 1, 4, Limits(None, None))
    assert check_beat(beat) == {**beat, "load": [float(x) for x in beat["load"]]}
    sneaky = {**beat, "hostname": "other", "policy": {"slots": 99}, "busy": ""}
    assert set(check_beat(sneaky)) == set(beat)
    with pytest.raises(BadHello, match="facts.mem_available"):
        check_beat({**beat, "mem_available": "lots"})
    with pytest.raises(BadHello, match="a heartbeat must be an object"):
        check_beat([1])


def test_headroom_reads_a_proc_root(tmp_path: Path) -> None:
    """The agent's reading: loadavg and meminfo under its --proc-root, its free slots and its
    own limits."""
    (tmp_path / "loadavg").write_text("3.50 2.25 1.00 3/200 999\n")
    (tmp_path / "meminfo").write_text("MemTotal: 8000 kB\nMemAvailable: 2048 kB\n")
    room = facts.headroom(tmp_path, 3, 4, Limits(2.0, 1 << 20))
    assert room["load"] == [3.5, 2.25, 1.0] and room["mem_available"] == 2048 * 1024
    assert (room["running"], room["free_slots"]) == (3, 1)
    assert (room["max_load"], room["min_free_memory"]) == (2.0, 1 << 20)
    empty = facts.headroom(tmp_path / "none", 0, 4, Limits())
    assert empty["load"] == [0.0, 0.0, 0.0] and empty["mem_available"] is None


def test_a_server_with_many_agents_asks_each_for_fewer_heartbeats() -> None:
    """The pace a server asks for keeps its whole fleet at BEATS_PER_SECOND at most: 10,000
    agents beat every 50 s, not every 5 (2,000 packets a second); a small fleet keeps the
    agents' own pace (they never beat faster than --heartbeat)."""
    assert beat_pace(10_000) == 50.0
    assert 10_000 / beat_pace(10_000) <= BEATS_PER_SECOND
    assert beat_pace(3) < 5.0


def test_an_agent_beats_at_the_pace_its_server_asks_never_faster_than_its_own(
    tmp_path: Path,
) -> None:
    """`beats` with `every` slows the agent's heartbeats (capped at MAX_BEAT_EVERY); a pace
    faster than --heartbeat, or none (an older server), leaves --heartbeat; the reply says which."""
    agent = Agent(AgentConfig(server="127.0.0.1:1", name="a", state_dir=tmp_path, heartbeat=5.0))
    sink = object()
    reply = agent.beats_asked(sink, {"op": "beats", "every": 50.0})
    assert (reply["every"], agent.beat_every) == (50.0, 50.0)
    assert set(reply["beat"]) >= {"load", "free_slots"}
    assert sink in agent._beat_sinks
    assert agent.beats_asked(sink, {"op": "beats", "every": 1e9})["every"] == MAX_BEAT_EVERY
    assert agent.beats_asked(sink, {"op": "beats", "every": 0.5})["every"] == 5.0
    assert agent.beats_asked(sink, {"op": "beats"})["every"] == 5.0
    assert agent.beats_asked(sink, {"op": "beats", "every": True})["every"] == 5.0


def test_an_agent_asked_for_slow_heartbeats_sends_keepalives_no_more_often() -> None:
    """At 10,000 agents the server asks for a heartbeat every 50 s: an agent of --keepalive 15
    (count 4) then sends one every 75 s and gives up after one missed (a silent server noticed
    within 150 s, not 300); a pace no slower than its own --heartbeat, or keepalives already as
    slow, or none, leave them as they are."""
    assert keepalive_for(50.0, 5.0, 15.0, 4) == (75.0, 1)
    assert keepalive_for(50.0, 5.0, 30.0, 4) == (75.0, 1)
    assert keepalive_for(50.0, 5.0, 60.0, 4) == (75.0, 3)
    assert keepalive_for(5.0, 5.0, 15.0, 4) == (15.0, 4)  # a small fleet: its own pace
    assert keepalive_for(8.0, 5.0, 15.0, 4) == (15.0, 4)  # 12 s would be more often
    assert keepalive_for(50.0, 5.0, 0.0, 4) == (0.0, 4)  # keepalives off stay off
    assert keepalive_for(50.0, 60.0, 15.0, 4) == (15.0, 4)  # slower by its own --heartbeat
