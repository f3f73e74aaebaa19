"""How much room an agent's host has for more work (pure code).

An agent reads its load average and available memory from two small /proc files
(`easytask.hostsample`'s `load_average` and `memory`) and reports them with its free slots in its hello and
in each heartbeat. The server judges them against the limits (`Limits`: the tighter of the
agent's `--max-load`/`--min-free-memory` and the inventory's `easytask_max_load`/
`easytask_min_free_memory`): an agent over one is busy (`busy_reason`). `run_on: any` and
`run --one` go to the agent `rank` puts first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from easytask.durations import parse_size

__all__ = [
    "LIMIT_VARS",
    "Headroom",
    "Limits",
    "busy_reason",
    "limits_from_vars",
    "rank",
    "show_bytes",
]

MAX_LOAD_VAR = "easytask_max_load"
MIN_FREE_MEMORY_VAR = "easytask_min_free_memory"
LIMIT_VARS = (MAX_LOAD_VAR, MIN_FREE_MEMORY_VAR)


@dataclass(frozen=True)
class Headroom:
    """An agent's room for work: free slots, 1-minute load, CPUs, available memory (bytes;
    None when its host does not say)."""

    free_slots: int
    load1: float = 0.0
    cpus: int = 1
    mem_available: int | None = None

    @property
    def load_per_cpu(self) -> float:
        """The 1-minute load average per CPU."""
        return self.load1 / max(self.cpus, 1)


@dataclass(frozen=True)
class Limits:
    """Thresholds over which an agent is busy; None: no limit."""

    max_load: float | None = None  # load per CPU
    min_free_memory: int | None = None  # bytes

    def tighter(self, other: Limits) -> Limits:
        """Each limit as the stricter of the two sets gives it."""
        loads = [x for x in (self.max_load, other.max_load) if x is not None]
        memory = [x for x in (self.min_free_memory, other.min_free_memory) if x is not None]
        return Limits(min(loads) if loads else None, max(memory) if memory else None)

    def __bool__(self) -> bool:
        return self.max_load is not None or self.min_free_memory is not None


def show_bytes(value: int) -> str:
    """A size as people read it: 512M, 1.5G, 64k."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f}".removesuffix(".0") + unit
    return str(value)


def _number(value: float) -> str:
    """2.0, 3.1, 12.35: two decimals at most, one at least."""
    text = f"{value:.2f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def busy_reason(room: Headroom, limits: Limits) -> str:
    """Why an agent is busy ("load 3.1/CPU > 2.0"), or "" when it is within its limits."""
    reasons = []
    if limits.max_load is not None and room.load_per_cpu > limits.max_load:
        reasons.append(f"load {_number(room.load_per_cpu)}/CPU > {_number(limits.max_load)}")
    floor = limits.min_free_memory
    if floor is not None and room.mem_available is not None and room.mem_available < floor:
        reasons.append(f"memory available {show_bytes(room.mem_available)} < {show_bytes(floor)}")
    return ", ".join(reasons)


def rank(candidates: Sequence[tuple[str, Headroom]]) -> list[str]:
    """Names from the most headroom to the least: more free slots first, then a lower load per
    CPU, then more available memory (unknown counts as none); equal ones keep their order."""

    def key(item: tuple[int, tuple[str, Headroom]]) -> tuple[int, float, int, int]:
        index, (_, room) = item
        memory = room.mem_available if room.mem_available is not None else -1
        return (-room.free_slots, room.load_per_cpu, -memory, index)

    return [name for _, (name, _room) in sorted(enumerate(candidates), key=key)]


def _load_limit(value: Any, where: str) -> float:
    ok = isinstance(value, int | float | str) and not isinstance(value, bool)
    try:
        number = float(value) if ok else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{where}: {value!r} is not a load per CPU (a number above 0, e.g. 2.0)")
    return number


def _memory_limit(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{where}: {value!r} is not a size (e.g. 256M)")
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def limits_from_vars(hostvars: Mapping[str, Any], host: str = "") -> Limits:
    """The limits a host's inventory variables set (`easytask_max_load`, e.g. 2.0;
    `easytask_min_free_memory`, e.g. 256M); ValueError naming the host and variable."""
    where = f"{host}: " if host else ""
    load = hostvars.get(MAX_LOAD_VAR)
    memory = hostvars.get(MIN_FREE_MEMORY_VAR)
    return Limits(
        None if load in (None, "") else _load_limit(load, where + MAX_LOAD_VAR),
        None if memory in (None, "") else _memory_limit(memory, where + MIN_FREE_MEMORY_VAR),
    )
