"""Imported at the start of a Python process whose path holds this directory (bench only).

In a process with EASYTASK_BENCH_PROFILE=PREFIX in its environment, SIGUSR1 starts cProfile
(counting the main thread's CPU time, not the wall clock: the machine is shared) and SIGUSR2
stops it and saves PREFIX-N.prof (N = 1, 2, ...) and PREFIX-N.gc.json: the main thread's CPU
time in the collector's automatic collections meanwhile, per generation, and how many there
were. `bench/profile_scale.py` starts the server so.
"""

import os

PREFIX = os.environ.get("EASYTASK_BENCH_PROFILE")

if PREFIX:
    import cProfile
    import gc
    import json
    import signal
    import time
    from typing import Any

    _profile = cProfile.Profile(time.thread_time)
    _saved = [0]
    _gc: dict[str, list[Any]] = {}  # generation: [collections, CPU seconds]; "long": each
    _began = [0.0]
    _since = [0.0]

    def _collected(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _began[0] = time.thread_time()
        else:
            spent = time.thread_time() - _began[0]
            tally = _gc.setdefault(str(info["generation"]), [0, 0.0])
            tally[0] += 1
            tally[1] += spent
            if spent > 0.02:  # the long ones, each: when (s into the profile) and how long
                _gc.setdefault("long", []).append(
                    [
                        info["generation"],
                        round(time.monotonic() - _since[0], 2),
                        round(spent, 3),
                        info["collected"],
                        gc.get_freeze_count(),
                    ]
                )

    def _start(*_: object) -> None:
        _gc.clear()
        _since[0] = time.monotonic()
        gc.callbacks.append(_collected)
        _profile.enable()

    def _stop(*_: object) -> None:
        _profile.disable()
        gc.callbacks.remove(_collected)
        _saved[0] += 1
        _profile.dump_stats(f"{PREFIX}-{_saved[0]}.prof")
        _profile.clear()
        with open(f"{PREFIX}-{_saved[0]}.gc.json", "w") as out:
            json.dump(_gc, out)

    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
