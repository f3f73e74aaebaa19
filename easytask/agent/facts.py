"""What an agent reports about its host: its facts (named as easytask.facts reads them) and
how busy it is."""

from __future__ import annotations

import os
import platform
import socket
from pathlib import Path
from typing import Any

from easytask import __version__
from easytask.facts import meminfo_mb, os_release, release_fields
from easytask.headroom import Limits
from easytask.hostsample import load_average, memory


def local_facts() -> dict[str, Any]:
    """This host's facts: names, OS, distribution, CPUs, memory (what GATHER_COMMAND reads)."""
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            release = os_release(fh.read())
    except OSError:
        release = {}
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            memory = meminfo_mb(fh.read())
    except OSError:
        memory = {}
    name = socket.gethostname()
    return {
        "hostname": name,
        "fqdn": socket.getfqdn(name),
        "system": platform.system(),
        "kernel": platform.release(),
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        **release_fields(release),
        **memory,
    }


def gather(running: int = 0) -> dict[str, Any]:
    """Hostname, OS, distribution, CPUs, memory, load average, agent version, running tasks."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = [0.0, 0.0, 0.0]
    return {
        **local_facts(),
        "load": [round(x, 2) for x in load],
        "version": __version__,
        "python": platform.python_version(),
        "running": running,
    }


def _read(path: Path) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(64 * 1024)
    except OSError:
        return ""


def headroom(proc_root: Path, running: int, slots: int, limits: Limits) -> dict[str, Any]:
    """What each heartbeat (and the hello) says about room for work: load averages, CPUs,
    available memory in bytes, running runs, free slots and the agent's own limits. Two small
    reads under `proc_root` (/proc, or a host's /proc mounted elsewhere)."""
    read = load_average(_read(proc_root / "loadavg"))
    load = [max(x, 0.0) for x in read] if read else []
    if not load:
        try:
            load = list(os.getloadavg()) if proc_root == Path("/proc") else [0.0, 0.0, 0.0]
        except OSError:
            load = [0.0, 0.0, 0.0]
    mem = memory(_read(proc_root / "meminfo"))
    return {
        "load": [round(x, 2) for x in load],
        "cpus": os.cpu_count() or 1,
        "mem_available": mem[1] if mem else None,
        "running": running,
        "free_slots": max(slots - running, 0),
        "max_load": limits.max_load,
        "min_free_memory": limits.min_free_memory,
    }
