"""bench/scale.py with the server profiled during each fan-out (cProfile, main thread's CPU).

    .venv/bin/python -m bench.profile_scale PREFIX [bench.scale options...]

The server runs with bench/profiled/ on its path (its sitecustomize.py), is sent SIGUSR1 before
each `easytask run all -a true` and SIGUSR2 after it, and saves PREFIX-1.prof, PREFIX-2.prof...
Read one with `python -c "import pstats; pstats.Stats('PREFIX-1.prof').sort_stats('cumtime')
.print_stats(60)"`. The profiler's own cost inflates the CPU figures of such a run: measure
without it.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import bench.scale as scale

SITE = Path(__file__).resolve().parent / "profiled"


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        raise SystemExit(__doc__)
    prefix, rest = str(Path(argv[0]).resolve()), argv[1:]
    start_server, fan_out = scale.start_server, scale.fan_out
    server_pid: list[int] = []

    def profiled_server(*args: Any, **kwargs: Any) -> Any:
        saved = dict(os.environ)
        os.environ["EASYTASK_BENCH_PROFILE"] = prefix
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(SITE), saved.get("PYTHONPATH")])
        )
        try:
            server = start_server(*args, **kwargs)
        finally:  # the agent simulators and the CLI are not profiled
            os.environ.clear()
            os.environ.update(saved)
        server_pid.append(server.proc.pid)
        return server

    def profiled_fan_out(server: Any, n: int) -> Any:
        os.kill(server_pid[-1], signal.SIGUSR1)
        try:
            return fan_out(server, n)
        finally:
            os.kill(server_pid[-1], signal.SIGUSR2)
            time.sleep(1.0)  # saved before the next one starts

    scale.start_server, scale.fan_out = profiled_server, profiled_fan_out
    return scale.main(rest)


if __name__ == "__main__":
    from bench.common import exit_on_sigterm

    exit_on_sigterm()
    raise SystemExit(main(sys.argv[1:]))
