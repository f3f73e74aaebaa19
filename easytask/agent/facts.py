"""What an agent reports about its host."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

from easytask import __version__


def gather(running: int = 0) -> dict[str, Any]:
    """Hostname, OS, CPUs, load average, agent version and running task count."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = [0.0, 0.0, 0.0]
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "distribution": _os_release(),
        "arch": platform.machine(),
        "cpus": os.cpu_count() or 1,
        "load": [round(x, 2) for x in load],
        "version": __version__,
        "python": platform.python_version(),
        "running": running,
    }


def _os_release() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return ""
