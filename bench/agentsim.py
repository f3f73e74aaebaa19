"""Many real agents in one process: each its own key, its own reverse SSH link, real commands.

    python -m bench.agentsim --server 127.0.0.1:8022 --count 500 --prefix sim --state-dir DIR \
        [--enroll TOKEN] [--group GROUP] [--metrics-interval S] [--synthetic-samples]

Agents are named PREFIX0001..PREFIXNNNN.  Used by the fan-out benchmark; each agent is the same
`easytask.agent.main.Agent` class the `easytask agent` command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import resource
import signal
import time
from pathlib import Path

from easytask.agent.main import Agent, AgentConfig
from easytask.gcpace import STEP_EVERY, Pacer
from easytask.hostsample import CpuTimes, Reading


class SyntheticHost:
    """Plausible, changing host readings without reading /proc: N senders in one process cost
    what the link and the server cost, not N times the sampling (measured apart)."""

    def __init__(self) -> None:
        self.ticks = 0
        self.net = 0

    def __call__(self, work_dir: str, proc: str) -> Reading:
        self.ticks += 100
        self.net += random.randrange(1000, 100_000)
        idle = self.ticks * random.uniform(0.2, 0.9)
        load = random.uniform(0, 4)
        return Reading(
            t=time.time(),
            cpu=CpuTimes(self.ticks, int(idle), int(self.ticks * 0.01)),
            net=(self.net, self.net // 2),
            load=(load, load * 0.9, load * 0.8),
            mem=(random.randrange(1 << 30, 4 << 30), 4 << 30, 0),
            disk_root=42.5,
            disk_work=42.5,
            procs=random.randrange(100, 300),
        )


def raise_nofile() -> None:
    """Many links need many descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def main(args: argparse.Namespace) -> None:
    raise_nofile()
    agents = [
        Agent(
            AgentConfig(
                server=args.server,
                name=f"{args.prefix}{i:04d}",
                state_dir=Path(args.state_dir) / f"{args.prefix}{i:04d}",
                enroll=args.enroll,
                groups=args.group,
                slots=args.slots,
                keepalive_interval=args.keepalive,
                backoff_max=args.backoff_max,
                hedge_after=args.hedge_after,
                metrics_interval=args.metrics_interval,
                metrics_active_interval=args.metrics_interval,
            )
        )
        for i in range(1, args.count + 1)
    ]
    if args.synthetic_samples:
        for agent in agents:
            if agent.sampler is not None:
                agent.sampler.reader = SyntheticHost()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    for agent in agents:
        tasks.append(asyncio.create_task(agent.run(), name=f"agent-{agent.config.name}"))
        await asyncio.sleep(0)  # stagger a little so the server is not hit all at once
    # the objects of every agent of this process (one agent's process holds few) out of each
    # full collection's way, as the server keeps its links' (easytask/gcpace.py)
    pacer = Pacer()
    while not stop.is_set():
        pacer.step()
        try:
            async with asyncio.timeout(STEP_EVERY):
                await stop.wait()
        except TimeoutError:
            pass
    for agent in agents:
        agent.stop()
    await asyncio.gather(*tasks, return_exceptions=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--prefix", default="sim")
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--enroll")
    parser.add_argument("--group", action="append", default=[])
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument(
        "--backoff-max", type=float, default=5, help="longest wait between reconnects (s)"
    )
    parser.add_argument("--keepalive", type=float, default=30, help="SSH keepalive interval (s)")
    parser.add_argument(
        "--hedge-after", type=float, default=5, help="s before the next server is dialled too"
    )
    parser.add_argument(
        "--metrics-interval", type=float, default=10.0, help="host samples every S s (0: none)"
    )
    parser.add_argument(
        "--synthetic-samples", action="store_true", help="made-up host readings, not /proc"
    )
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))
