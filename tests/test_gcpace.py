"""The collector's pacing (easytask/gcpace.py): what survived a step is out of the automatic
collections' sight; garbage in cycles among it is reclaimed at the next sweep."""

from __future__ import annotations

import gc
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
