"""Imported at the start of a Python process whose path holds this directory (bench only).

In a process with EASYTASK_BENCH_PROFILE=PREFIX in its environment, SIGUSR1 starts cProfile
(counting the main thread's CPU time, not the wall clock: the machine is shared) and SIGUSR2
stops it and saves PREFIX-N.prof (N = 1, 2, ...). `bench/profile_scale.py` starts the server so.
"""

import os

PREFIX = os.environ.get("EASYTASK_BENCH_PROFILE")

if PREFIX:
    import cProfile
    import signal
    import time

    _profile = cProfile.Profile(time.thread_time)
    _saved = [0]

    def _start(*_: object) -> None:
        _profile.enable()

    def _stop(*_: object) -> None:
        _profile.disable()
        _saved[0] += 1
        _profile.dump_stats(f"{PREFIX}-{_saved[0]}.prof")
        _profile.clear()

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
