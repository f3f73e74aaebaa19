"""Host samples: what an agent measures of its host, read from /proc texts (pure code).

An agent reads its host's /proc files (easytask.agent.hostmetrics) and turns two readings an
interval apart into one sample: CPU and iowait as percent of the interval, load averages,
memory in bytes, disk use in percent, network bytes per second over the interval, and the
number of processes. The server checks each batch it receives with `check_batch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "FIELDS",
    "MAX_BATCH",
    "BadSamples",
    "CpuTimes",
    "Reading",
    "check_batch",
    "cpu_times",
    "disk_percent",
    "load_average",
    "make_sample",
    "memory",
    "net_bytes",
]

# A sample is a row: its time (epoch seconds) then these values, each a number or None (not
# measured on this host). Units: percent, load, bytes, percent, bytes per second, processes.
FIELDS = (
    "cpu",
    "iowait",
    "load1",
    "load5",
    "load15",
    "mem_used",
    "mem_available",
    "swap_used",
    "disk_root_pct",
    "disk_work_pct",
    "net_rx",
    "net_tx",
    "procs",
)
MAX_BATCH = 600  # samples in one reply at most
MAX_VALUE = 1e18  # bytes of memory or per second: larger is no measurement


@dataclass(frozen=True)
class CpuTimes:
    """The `cpu` line of /proc/stat: all time, idle time and iowait time, in clock ticks."""

    total: int
    idle: int
    iowait: int


@dataclass(frozen=True)
class Reading:
    """What one read of the host gives, before it is compared with the previous one."""

    t: float
    cpu: CpuTimes | None
    net: tuple[int, int] | None  # bytes received, sent since boot (all but loopback)
    load: tuple[float, float, float] | None
    mem: tuple[int, int, int] | None  # used, available, swap used (bytes)
    disk_root: float | None
    disk_work: float | None
    procs: int | None


def cpu_times(stat: str) -> CpuTimes | None:
    """The totals of the `cpu` line of a /proc/stat text; None if it has none."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            try:
                ticks = [int(v) for v in line.split()[1:]]
            except ValueError:
                return None
            if len(ticks) < 4:
                return None
            # user nice system idle iowait irq softirq steal (guest time is inside user)
            iowait = ticks[4] if len(ticks) > 4 else 0
            return CpuTimes(total=sum(ticks[:8]), idle=ticks[3], iowait=iowait)
    return None


def memory(meminfo: str) -> tuple[int, int, int] | None:
    """(used, available, swap used) in bytes from a /proc/meminfo text; None without MemTotal.

    Used is total minus available, as `free` counts it; a kernel without MemAvailable (before
    3.14) gives free + buffers + cached as available.
    """
    kib: dict[str, int] = {}
    for line in meminfo.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        parts = rest.split()
        if parts and parts[0].isdigit():
            kib[key.strip()] = int(parts[0])
    if "MemTotal" not in kib:
        return None
    available = kib.get("MemAvailable")
    if available is None:
        available = kib.get("MemFree", 0) + kib.get("Buffers", 0) + kib.get("Cached", 0)
    used = max(kib["MemTotal"] - available, 0)
    swap = max(kib.get("SwapTotal", 0) - kib.get("SwapFree", 0), 0)
    return used * 1024, available * 1024, swap * 1024


def load_average(loadavg: str) -> tuple[float, float, float] | None:
    """The 1, 5 and 15 minute load averages of a /proc/loadavg text."""
    parts = loadavg.split()
    try:
        return float(parts[0]), float(parts[1]), float(parts[2])
    except (IndexError, ValueError):
        return None


def net_bytes(netdev: str) -> tuple[int, int] | None:
    """Bytes received and sent by every interface but loopback, from a /proc/net/dev text."""
    rx = tx = 0
    seen = False
    for line in netdev.splitlines():
        name, sep, rest = line.partition(":")
        if not sep or "|" in rest:
            continue
        name = name.strip()
        values = rest.split()
        if name == "lo" or len(values) < 9:
            continue
        try:
            rx += int(values[0])
            tx += int(values[8])
        except ValueError:
            continue
        seen = True
    return (rx, tx) if seen else None


def disk_percent(blocks: int, free: int, available: int) -> float | None:
    """Percent of a file system in use as `df` shows it (blocks reserved for root left out)."""
    used = blocks - free
    usable = used + available
    if blocks <= 0 or usable <= 0:
        return None
    return round(100.0 * used / usable, 2)


def _percent(part: int, whole: int) -> float:
    return round(min(max(100.0 * part / whole, 0.0), 100.0), 2)


def make_sample(prev: Reading, now: Reading) -> list[float | None]:
    """One sample row `[t, *FIELDS]` from two readings: rates and percents over the interval."""
    cpu = iowait = None
    if prev.cpu is not None and now.cpu is not None:
        total = now.cpu.total - prev.cpu.total
        if total > 0:
            idle = now.cpu.idle - prev.cpu.idle
            wait = now.cpu.iowait - prev.cpu.iowait
            cpu = _percent(total - idle - wait, total)
            iowait = _percent(wait, total)
    rx = tx = None
    elapsed = now.t - prev.t
    if prev.net is not None and now.net is not None and elapsed > 0:
        # counters that went down (an interface gone, a wrap) give no rate this time
        drx, dtx = now.net[0] - prev.net[0], now.net[1] - prev.net[1]
        rx = round(drx / elapsed, 1) if drx >= 0 else None
        tx = round(dtx / elapsed, 1) if dtx >= 0 else None
    load = now.load or (None, None, None)
    mem = now.mem or (None, None, None)
    return [
        now.t,
        cpu,
        iowait,
        *load,
        *mem,
        now.disk_root,
        now.disk_work,
        rx,
        tx,
        now.procs,
    ]


class BadSamples(ValueError):
    """An agent's batch of host samples does not follow the schema; the message says where."""


def _value(value: Any, where: str) -> float | None:
    if value is None:
        return None
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or not 0 <= value <= MAX_VALUE:
        raise BadSamples(f"{where} must be a number from 0 or null")
    return float(value)


def check_batch(reply: Any, now: float) -> list[tuple[float, list[float | None]]]:
    """The samples of an agent's `metrics` reply as (t, values in FIELDS order); `BadSamples`
    naming the first thing that does not follow the schema.

    The reply names its fields; fields this server does not know are left out and fields it
    knows that the reply lacks are None (agents and servers of other versions). A sample's time
    must be after 2000-01-01 and not more than a day ahead of the server's clock.
    """
    if not isinstance(reply, dict):
        raise BadSamples("the reply must be an object")
    fields = reply.get("fields")
    rows = reply.get("samples")
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise BadSamples("fields must be a list of names")
    if not isinstance(rows, list) or len(rows) > MAX_BATCH:
        raise BadSamples(f"samples must be a list of at most {MAX_BATCH} rows")
    where = {name: i + 1 for i, name in enumerate(fields)}
    picks = [where.get(name) for name in FIELDS]
    out: list[tuple[float, list[float | None]]] = []
    for n, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(fields) + 1:
            raise BadSamples(f"samples[{n}] must be a list of {len(fields) + 1} values")
        t = _value(row[0], f"samples[{n}][0]")
        if t is None or not 946684800.0 <= t <= now + 86400:
            raise BadSamples(f"samples[{n}][0] must be a time from 2000 to a day from now")
        values = [
            None if i is None else _value(row[i], f"samples[{n}].{FIELDS[k]}")
            for k, i in enumerate(picks)
        ]
        out.append((round(t, 3), values))
    return out


def columns(rows: Sequence[Sequence[Any]]) -> dict[str, list[Any]]:
    """Rows `(t, *FIELDS)` as one list per column: `t` and each field."""
    names = ("t", *FIELDS)
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}
