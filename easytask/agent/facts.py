"""What an agent reports about its host: its facts (named as easytask.facts reads them) and
how busy it is."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from easytask import __version__
from easytask.facts import meminfo_mb, os_release, release_fields


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
