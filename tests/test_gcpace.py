"""The collector's pacing (easytask/gcpace.py): what survived a step is out of the automatic
collections' sight; garbage in cycles among it is reclaimed at the next sweep."""

from __future__ import annotations

import gc
import sys
import weakref
from collections.abc import Iterator

import pytest

from easytask.gcpace import Pacer


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
    pacer = Pacer(sweep_every=900.0, clock=lambda: 0.0)
    pacer.step()
    kept = pacer.kept
    assert kept == pytest.approx(sys.getallocatedblocks(), rel=0.01)
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


def test_a_sweep_for_growth_waits_until_nothing_runs() -> None:
    """A sweep walks every object, the process doing nothing else: one that growth calls for
    waits for a step with no run in flight (a viewer's live lines would wait behind it)."""
    gc.unfreeze()
    gc.collect()
    busy = [True]
    pacer = Pacer(sweep_every=900.0, clock=lambda: 0.0, busy=lambda: busy[0])
    pacer.step()
    nodes = _grown_by(0.5, pacer.kept)
    gone = weakref.ref(nodes[0])
    pacer.step()
    del nodes
    pacer.step()
    pacer.step()
    assert gone() is not None and pacer.sweeps == 0  # grown by half, but busy
    busy[0] = False
    pacer.step()
    assert gone() is None and pacer.sweeps == 1
