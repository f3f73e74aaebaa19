"""The agent's host sampler: reads /proc every few seconds and keeps the samples until the server
has stored them.

Samples are taken every `interval` seconds, every `active_interval` while a run is active, and
kept in a bounded queue (the oldest go first when it is full). The server asks for them with the
`metrics` control request, naming the newest sample it has stored (`after`): those up to it are
dropped, the next ones are sent once a batch is due. A link that drops loses nothing: the samples
stay queued until a server says it has them, and a server that stores one twice keeps it once
(its time is its key). Where /proc is missing (not Linux), the load and disk use still come from
`os.getloadavg` and `os.statvfs`; the other fields are null.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from easytask.hostsample import (
    FIELDS,
    MAX_BATCH,
    Reading,
    cpu_times,
    disk_percent,
    load_average,
    make_sample,
    memory,
    net_bytes,
)

SPOOL = 3600  # samples kept unsent at most: an hour at 1 s, ten hours at 10 s
BATCH_DELAY = 5.0  # seconds the oldest unsent sample waits for others to go with it
MAX_WAIT = 60.0  # seconds a `metrics` request may be held open


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _disk(path: str) -> float | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return disk_percent(st.f_blocks, st.f_bfree, st.f_bavail)


def _procs(proc: str) -> int | None:
    try:
        return sum(1 for name in os.listdir(proc) if name.isdigit())
    except OSError:
        return None


def read_host(work_dir: str, proc: str = "/proc") -> Reading:
    """One reading of this host (no rates yet: `make_sample` compares two)."""
    stat = _read(f"{proc}/stat")
    meminfo = _read(f"{proc}/meminfo")
    loadavg = _read(f"{proc}/loadavg")
    netdev = _read(f"{proc}/net/dev")
    load = load_average(loadavg) if loadavg is not None else None
    if load is None:
        try:
            load = os.getloadavg()
        except (OSError, AttributeError):
            load = None
    return Reading(
        t=time.time(),
        cpu=cpu_times(stat) if stat is not None else None,
        net=net_bytes(netdev) if netdev is not None else None,
        load=load,
        mem=memory(meminfo) if meminfo is not None else None,
        disk_root=_disk("/"),
        disk_work=_disk(work_dir),
        procs=_procs(proc) if stat is not None else None,
    )


class HostSampler:
    """Samples the host on a timer and hands the samples to the server in batches."""

    def __init__(
        self,
        interval: float,
        active_interval: float,
        work_dir: str,
        spool: int = SPOOL,
        batch_delay: float = BATCH_DELAY,
        proc: str = "/proc",
        reader: Callable[[str, str], Reading] = read_host,
    ) -> None:
        self.interval = interval
        self.active_interval = active_interval or interval
        self.work_dir = work_dir
        self.batch_delay = batch_delay
        self.proc = proc
        self.reader = reader
        self.samples: deque[list[float | None]] = deque(maxlen=max(spool, 1))
        self.dropped = 0  # samples pushed out of a full queue, never sent
        self.taken = 0
        self.cpu_seconds = 0.0  # the process CPU time spent sampling (reported in `metrics`)
        self._prev: Reading | None = None
        self._added = asyncio.Event()
        self._wake = asyncio.Event()

    def sample(self) -> list[float | None] | None:
        """Take one sample now (None for the first reading: rates need two)."""
        started = time.process_time()
        now = self.reader(self.work_dir, self.proc)
        row = None
        if self._prev is not None:
            row = make_sample(self._prev, now)
            row[0] = round(now.t, 3)
            last = self.samples[-1][0] if self.samples else None
            if last is not None and row[0] is not None and row[0] <= last:
                row[0] = round(last + 0.001, 3)  # the time is the sample's key: never twice
            if len(self.samples) == self.samples.maxlen:
                self.dropped += 1
            self.samples.append(row)
            self.taken += 1
            self._added.set()
        self._prev = now
        self.cpu_seconds += time.process_time() - started
        return row

    def wake(self) -> None:
        """A run started: sample at the active pace from now on, not at the next idle tick."""
        self._wake.set()

    async def run(self, active: Callable[[], bool]) -> None:
        """Sample until cancelled, every `active_interval` while `active()`, else `interval`."""
        while True:
            self.sample()
            pause = self.active_interval if active() else self.interval
            self._wake.clear()
            try:
                async with asyncio.timeout(pause):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def ack(self, after: float) -> None:
        """Drop the samples up to `after` (the server has stored them)."""
        while self.samples and (self.samples[0][0] or 0.0) <= after:
            self.samples.popleft()

    def _due(self, limit: int) -> bool:
        if not self.samples:
            return False
        oldest = self.samples[0][0] or 0.0
        return len(self.samples) >= limit or time.time() - oldest >= self.batch_delay

    async def batch(self, after: float, wait: float, limit: int = MAX_BATCH) -> dict[str, Any]:
        """The samples after `after` (those up to it are dropped), once a batch is due: the
        oldest has waited `batch_delay`, or `limit` are queued; at most `wait` seconds."""
        self.ack(after)
        limit = max(1, min(limit, MAX_BATCH))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(wait, MAX_WAIT))
        while not self._due(limit):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if self.samples:
                oldest = self.samples[0][0] or 0.0
                remaining = min(remaining, oldest + self.batch_delay - time.time())
            self._added.clear()
            try:
                async with asyncio.timeout(max(remaining, 0.01)):
                    await self._added.wait()
            except TimeoutError:
                pass
        rows = [row for row in self.samples if (row[0] or 0.0) > after][:limit]
        return {
            "fields": list(FIELDS),
            "samples": rows,
            "more": len(self.samples) > len(rows),
            "dropped": self.dropped,
            "interval": self.interval,
            "active_interval": self.active_interval,
        }
