"""Headroom: /proc texts read, limits judged (the tighter wins), agents ranked for `run_on: any`."""

from __future__ import annotations

import pytest

from easytask.headroom import (
    Headroom,
    Limits,
    busy_reason,
    limits_from_vars,
    rank,
)

MEMINFO = """\
MemTotal:        8048576 kB
MemFree:          123456 kB
MemAvailable:    2097152 kB
Buffers:           10000 kB
"""
G = 1 << 30
M = 1 << 20


@pytest.mark.parametrize(
    ("room", "limits", "reason"),
    [
        (Headroom(4, 6.2, 2, 4 * G), Limits(2.0), "load 3.1/CPU > 2.0"),
        (Headroom(4, 4.0, 2, 4 * G), Limits(2.0), ""),  # at the limit is not over it
        (Headroom(4, 9.0, 2, 4 * G), Limits(), ""),  # no limit, never busy
        (Headroom(4, 0.5, 2, 100 * M), Limits(None, 256 * M), "memory available 100M < 256M"),
        (Headroom(4, 0.5, 2, None), Limits(None, 256 * M), ""),  # unknown memory: not judged
        (
            Headroom(1, 7.0, 1, 1536 * M),
            Limits(2.5, 2 * G),
            "load 7.0/CPU > 2.5, memory available 1.5G < 2G",
        ),
    ],
)
def test_busy_reason_names_each_limit_passed(room: Headroom, limits: Limits, reason: str) -> None:
    """An agent over a limit is busy, and the reason names the figure and the limit."""
    assert busy_reason(room, limits) == reason


@pytest.mark.parametrize(
    ("agent", "server", "tighter"),
    [
        (Limits(2.0, None), Limits(1.5, None), Limits(1.5, None)),
        (Limits(1.0, 256 * M), Limits(3.0, 1 * G), Limits(1.0, 1 * G)),
        (Limits(), Limits(2.0, 64 * M), Limits(2.0, 64 * M)),
        (Limits(), Limits(), Limits()),
    ],
)
def test_the_tighter_limit_wins(agent: Limits, server: Limits, tighter: Limits) -> None:
    """Of the agent's and the server's limits, the lower load and the higher memory floor count."""
    assert agent.tighter(server) == tighter == server.tighter(agent)


def test_limits_come_from_inventory_vars() -> None:
    """easytask_max_load and easytask_min_free_memory set the server's limits of a host."""
    assert limits_from_vars({"easytask_max_load": "1.5", "easytask_min_free_memory": "512M"}) == (
        Limits(1.5, 512 * M)
    )
    assert limits_from_vars({"easytask_max_load": 2}) == Limits(2.0, None)
    assert limits_from_vars({}) == Limits()


@pytest.mark.parametrize(
    ("hostvars", "message"),
    [
        ({"easytask_max_load": "lots"}, "web1: easytask_max_load: 'lots' is not a load per CPU"),
        ({"easytask_max_load": 0}, "web1: easytask_max_load: 0 is not a load per CPU"),
        ({"easytask_max_load": True}, "web1: easytask_max_load: True is not a load per CPU"),
        ({"easytask_min_free_memory": "a bit"}, "web1: easytask_min_free_memory: not a size"),
        ({"easytask_min_free_memory": [1]}, "web1: easytask_min_free_memory: [1] is not a size"),
    ],
)
def test_bad_limit_names_host_and_variable(hostvars: dict[str, object], message: str) -> None:
    """A limit that is not one says which host and variable hold it."""
    with pytest.raises(ValueError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        limits_from_vars(hostvars, "web1")


@pytest.mark.parametrize(
    ("candidates", "order"),
    [
        # free slots first
        ([("a", Headroom(1, 0.0, 4, 8 * G)), ("b", Headroom(3, 8.0, 4, 1 * G))], ["b", "a"]),
        # then load per CPU (not the raw load: 4 on 8 CPUs is less than 3 on 2)
        ([("a", Headroom(2, 3.0, 2, 8 * G)), ("b", Headroom(2, 4.0, 8, 1 * G))], ["b", "a"]),
        # then available memory; unknown memory counts as none
        (
            [
                ("a", Headroom(2, 1.0, 2, None)),
                ("b", Headroom(2, 1.0, 2, 1 * G)),
                ("c", Headroom(2, 1.0, 2, 4 * G)),
            ],
            ["c", "b", "a"],
        ),
        # equal ones keep the order given (stable)
        (
            [
                ("c", Headroom(2, 1.0, 2, G)),
                ("a", Headroom(2, 1.0, 2, G)),
                ("b", Headroom(2, 1.0, 2, G)),
            ],
            ["c", "a", "b"],
        ),
        ([], []),
    ],
)
def test_rank_puts_most_headroom_first(
    candidates: list[tuple[str, Headroom]], order: list[str]
) -> None:
    """Agents rank by free slots, then load per CPU, then available memory, ties as given."""
    assert rank(candidates) == order
