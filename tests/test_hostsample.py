"""Host samples: /proc texts read into numbers, two readings into one sample, batches checked, and
the agent's sampler queue (fixture /proc files, no server)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import pytest

from easytask.agent.hostmetrics import HostSampler, read_host
from easytask.hostsample import (
    FIELDS,
    BadSamples,
    CpuTimes,
    Reading,
    check_batch,
    cpu_times,
    disk_percent,
    load_average,
    make_sample,
    memory,
    net_bytes,
)

STAT = """\
cpu  1000 50 300 8000 200 10 20 5 0 0
cpu0 500 25 150 4000 100 5 10 2 0 0
intr 12345
processes 999
"""
MEMINFO = """\
MemTotal:       16000000 kB
MemFree:         2000000 kB
MemAvailable:   12000000 kB
Buffers:          100000 kB
Cached:          3000000 kB
SwapTotal:       4000000 kB
SwapFree:        3000000 kB
"""
OLD_MEMINFO = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n"
NETDEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo: 5000000     100    0    0    0     0          0         0  5000000     100    0    0    0     0       0          0
  eth0: 1000     10    0    0    0     0          0         0  2000     20    0    0    0     0       0          0
  eth1:500 5 0 0 0 0 0 0 700 7 0 0 0 0 0 0
"""


def test_cpu_line_totals() -> None:
    """The `cpu` line: all of user..steal, idle and iowait; none without such a line."""
    assert cpu_times(STAT) == CpuTimes(
        total=1000 + 50 + 300 + 8000 + 200 + 10 + 20 + 5, idle=8000, iowait=200
    )
    assert cpu_times("intr 1\n") is None
    assert cpu_times("cpu  1 2\n") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MEMINFO, (4000000 * 1024, 12000000 * 1024, 1000000 * 1024)),
        (OLD_MEMINFO, (600 * 1024, 400 * 1024, 0)),  # no MemAvailable: free + buffers + cached
        ("nothing here\n", None),
    ],
)
def test_memory(text: str, expected: tuple[int, int, int] | None) -> None:
    """Used is total minus available; swap used is total minus free; bytes."""
    assert memory(text) == expected


def test_load_network_and_disk() -> None:
    """Load averages; network bytes of every interface but loopback; disk use as `df` says."""
    assert load_average("0.50 1.25 2.00 3/400 12345\n") == (0.5, 1.25, 2.0)
    assert load_average("garbage") is None
    assert net_bytes(NETDEV) == (1500, 2700)
    assert net_bytes("Inter-|\n face |\n    lo: 1 2 3 4 5 6 7 8 9\n") is None
    assert disk_percent(1000, 400, 300) == pytest.approx(66.67)  # 600 used of 900 usable
    assert disk_percent(0, 0, 0) is None


def _reading(t: float, total: int, idle: int, iowait: int, rx: int, tx: int) -> Reading:
    return Reading(
        t=t,
        cpu=CpuTimes(total, idle, iowait),
        net=(rx, tx),
        load=(1.0, 2.0, 3.0),
        mem=(10, 20, 30),
        disk_root=50.0,
        disk_work=60.0,
        procs=123,
    )


def test_two_readings_make_a_sample_of_percents_and_rates() -> None:
    """CPU busy and iowait as percent of the interval's ticks; network as bytes per second."""
    before = _reading(100.0, 1000, 800, 0, 10_000, 20_000)
    after = _reading(102.0, 1200, 900, 20, 14_000, 20_500)
    row = make_sample(before, after)
    assert dict(zip(("t", *FIELDS), row, strict=True)) == {
        "t": 102.0,
        "cpu": 40.0,  # 200 ticks: 100 idle, 20 iowait, 80 busy
        "iowait": 10.0,
        "load1": 1.0,
        "load5": 2.0,
        "load15": 3.0,
        "mem_used": 10,
        "mem_available": 20,
        "swap_used": 30,
        "disk_root_pct": 50.0,
        "disk_work_pct": 60.0,
        "net_rx": 2000.0,
        "net_tx": 250.0,
        "procs": 123,
    }
    # a counter that went down (an interface gone) gives no rate; no ticks give no CPU
    reset = make_sample(after, _reading(103.0, 1200, 900, 20, 100, 30_000))
    assert reset[FIELDS.index("net_rx") + 1] is None and reset[FIELDS.index("cpu") + 1] is None


def test_batch_check_keeps_known_fields_and_refuses_bad_values() -> None:
    """Fields the server does not know are left out, missing ones are None; a bad value or
    time refuses the batch naming the place."""
    now = time.time()
    ok = check_batch({"fields": ["cpu", "future"], "samples": [[now, 12.5, 7]]}, now)
    assert ok == [(round(now, 3), [12.5] + [None] * (len(FIELDS) - 1))]
    bad = [
        ([], "the reply must be an object"),
        ({"fields": "cpu", "samples": []}, "fields must be a list of names"),
        ({"fields": ["cpu"], "samples": [[now]]}, "samples[0] must be a list of 2 values"),
        ({"fields": ["cpu"], "samples": [[now, -1]]}, "samples[0].cpu must be a number"),
        ({"fields": ["cpu"], "samples": [[now, math.inf]]}, "samples[0].cpu must be a number"),
        ({"fields": ["cpu"], "samples": [[now, True]]}, "samples[0].cpu must be a number"),
        ({"fields": ["cpu"], "samples": [[now + 2 * 86400, 1]]}, "samples[0][0] must be a time"),
        ({"fields": ["cpu"], "samples": [["x", 1]]}, "samples[0][0] must be a number"),
        ({"fields": [], "samples": [[now]] * 601}, "samples must be a list of at most 600"),
    ]
    for reply, message in bad:
        with pytest.raises(BadSamples) as caught:
            check_batch(reply, now)
        assert str(caught.value).startswith(message), (reply, caught.value)


def _fake_proc(root: Path, ticks: int) -> Path:
    (root / "net").mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu  {ticks} 0 0 {ticks} 0 0 0 0\n")
    (root / "meminfo").write_text(MEMINFO)
    (root / "loadavg").write_text("0.10 0.20 0.30 1/10 99\n")
    (root / "net" / "dev").write_text(NETDEV)
    for pid in ("1", "42", "self"):
        (root / pid).mkdir(exist_ok=True)
    return root


def test_read_host_from_fixture_files_and_without_proc(tmp_path: Path) -> None:
    """A reading from /proc files; where there are none (not Linux) load and disk still come
    from the standard library and the rest is None."""
    proc = _fake_proc(tmp_path / "proc", 100)
    got = read_host(str(tmp_path), str(proc))
    assert got.cpu == CpuTimes(200, 100, 0)
    assert got.load == (0.1, 0.2, 0.3) and got.procs == 2 and got.net == (1500, 2700)
    assert got.mem is not None and got.disk_work is not None
    bare = read_host(str(tmp_path), str(tmp_path / "missing"))
    assert bare.cpu is None and bare.mem is None and bare.net is None and bare.procs is None
    assert bare.load is not None and bare.disk_root is not None


def test_sampler_queue_acknowledges_bounds_and_batches(tmp_path: Path) -> None:
    """Samples wait until a request names a later one as stored; a full queue drops the oldest;
    a request answers once the oldest waited the batch delay (or at once when enough wait)."""
    proc = _fake_proc(tmp_path / "proc", 100)

    async def scenario() -> None:
        sampler = HostSampler(10, 1, str(tmp_path), spool=3, batch_delay=0.2, proc=str(proc))
        assert sampler.sample() is None  # the first reading only starts the interval
        for ticks in (200, 300, 400, 500):
            _fake_proc(proc, ticks)
            sampler.sample()
        assert len(sampler.samples) == 3 and sampler.dropped == 1
        times = [row[0] for row in sampler.samples]
        assert times == sorted(set(times))  # strictly increasing: the time is the key
        first = await sampler.batch(0.0, wait=5, limit=2)  # two queued: due at once
        assert [r[0] for r in first["samples"]] == times[:2] and first["more"]
        assert first["fields"] == list(FIELDS) and first["dropped"] == 1
        again = await sampler.batch(0.0, wait=5)  # not acknowledged: sent again
        assert [r[0] for r in again["samples"]] == times
        rest = await sampler.batch(times[1], wait=5)  # the first two are stored
        assert [r[0] for r in rest["samples"]] == times[2:] and not rest["more"]
        started = time.monotonic()
        empty = await sampler.batch(times[2], wait=0.3)
        assert empty["samples"] == [] and time.monotonic() - started >= 0.25
        _fake_proc(proc, 600)
        sampler.sample()
        started = time.monotonic()
        late = await sampler.batch(times[2], wait=5)
        assert len(late["samples"]) == 1 and time.monotonic() - started < 2

    asyncio.run(scenario())
