"""The collector's pacing (easytask/gcpace.py): what survived a step is out of the automatic
collections' sight; garbage in cycles among it is reclaimed at the next sweep."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from easytask.gcpace import QUIET_BEFORE_SWEEP, Pacer


class _Node:
    def __init__(self) -> None:
        self.me = self  # a reference cycle: only the collector frees it


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_a_step_freezes_what_survived_and_a_sweep_reclaims_cycles_among_it() -> None:
    now = [0.0]
    pacer = Pacer(sweep_every=900.0, clock=lambda: now[0])
    node = _Node()
    gone = weakref.ref(node)
    pacer.step()
    assert gc.get_freeze_count() > 0
    del node
    gc.collect()  # a full collection leaves the frozen alone
    assert gone() is not None
    now[0] = 899.0
    pacer.step()  # no sweep before its time
    assert gone() is not None and pacer.sweeps == 0
    now[0] = 900.0
    pacer.step()
    assert gone() is None and pacer.sweeps == 1
    assert gc.get_freeze_count() > 0  # frozen again after the sweep


def _grown_by(fraction: float, kept: int) -> list[_Node]:
    """Objects (each in a reference cycle) until the process holds `fraction` more memory
    blocks than `kept`."""
    nodes: list[_Node] = []
    while sys.getallocatedblocks() < kept * (1 + fraction):
        nodes.extend(_Node() for _ in range(1000))
    return nodes


def test_a_sweep_comes_sooner_once_memory_grew_by_a_quarter() -> None:
    """Garbage in cycles among objects frozen while in use (a fan-out's runs) is reclaimed once
    the process holds a quarter more memory blocks than after the last sweep, not only every
    15 minutes."""
    gc.unfreeze()
    gc.collect()
    now = [0.0]
    pacer = Pacer(sweep_every=900.0, clock=lambda: now[0])
    pacer.step()
    kept = pacer.kept
    assert kept == pytest.approx(sys.getallocatedblocks(), rel=0.01)
    now[0] = QUIET_BEFORE_SWEEP  # quiet long enough
    nodes = _grown_by(0.1, kept)  # a tenth more: no sweep
    gone = weakref.ref(nodes[0])
    pacer.step()
    del nodes  # frozen: the cycles stay, and so do their blocks
    pacer.step()
    assert gone() is not None and pacer.sweeps == 0
    more = _grown_by(0.3, kept)  # then past a quarter: swept
    pacer.step()
    assert gone() is None and pacer.sweeps == 1
    del more


def test_a_sweep_for_growth_waits_until_nothing_ran_for_a_while() -> None:
    """A sweep walks every object, the process doing nothing else: one that growth calls for
    waits until no run was in flight for `QUIET_BEFORE_SWEEP` seconds (not in the moments after
    a fan-out, while its clients read its results; a viewer's live lines would wait behind
    it)."""
    gc.unfreeze()
    gc.collect()
    busy = [True]
    now = [0.0]
    pacer = Pacer(sweep_every=900.0, clock=lambda: now[0], busy=lambda: busy[0])
    pacer.step()
    nodes = _grown_by(0.5, pacer.kept)
    gone = weakref.ref(nodes[0])
    pacer.step()
    del nodes
    now[0] = 100.0
    pacer.step()
    assert gone() is not None and pacer.sweeps == 0  # grown by half, but busy
    busy[0] = False
    pacer.step()  # quiet from now on
    now[0] += QUIET_BEFORE_SWEEP - 0.5
    pacer.step()
    assert gone() is not None and pacer.sweeps == 0  # not quiet for long enough
    busy[0] = True
    now[0] += 1.0
    pacer.step()  # busy again: the quiet starts over
    busy[0] = False
    pacer.step()
    now[0] += QUIET_BEFORE_SWEEP - 0.5
    pacer.step()
    assert gone() is not None and pacer.sweeps == 0
    now[0] += 0.5
    pacer.step()
    assert gone() is None and pacer.sweeps == 1


def test_what_survives_is_frozen_between_steps_after_a_middle_collection() -> None:
    """A step is a timer on the server's event loop, late while a fan-out's callbacks run: a
    collection of the middle generation a second or more after the last freeze freezes what
    survived, so the automatic full collections meanwhile do not scan it again and again."""
    gc.unfreeze()
    gc.collect()
    now = [0.0]
    pacer = Pacer(sweep_every=900.0, clock=lambda: now[0])
    pacer.step()
    unhook = pacer.between_steps()
    try:
        frozen = gc.get_freeze_count()
        soon = [_Node() for _ in range(1000)]
        gc.collect(1)  # within the second: nothing frozen
        assert gc.get_freeze_count() == frozen
        now[0] = 1.0
        later = [_Node() for _ in range(1000)]
        gc.collect(0)  # the youngest generation only: nothing frozen
        assert gc.get_freeze_count() == frozen
        gc.collect(1)
        assert gc.get_freeze_count() >= frozen + 2000
    finally:
        unhook()
    now[0] = 5.0
    frozen = gc.get_freeze_count()
    after = [_Node() for _ in range(1000)]
    gc.collect(1)  # unhooked: no more freezes between steps
    assert gc.get_freeze_count() == frozen
    assert len(soon) == len(later) == len(after) == 1000
