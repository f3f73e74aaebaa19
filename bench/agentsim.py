"""Many real agents in one process: each its own key, its own reverse SSH link, real commands.

    python -m bench.agentsim --server 127.0.0.1:8022 --count 500 --prefix sim --state-dir DIR \
        [--enroll TOKEN] [--group GROUP]

Agents are named PREFIX0001..PREFIXNNNN.  Used by the fan-out benchmark; each agent is the same
`easytask.agent.main.Agent` class the `easytask agent` command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
from pathlib import Path

from easytask.agent.main import Agent, AgentConfig


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
                backoff_max=5,
            )
        )
        for i in range(1, args.count + 1)
    ]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tasks = []
    for agent in agents:
        tasks.append(asyncio.create_task(agent.run(), name=f"agent-{agent.config.name}"))
        await asyncio.sleep(0)  # stagger a little so the server is not hit all at once
    await stop.wait()
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
    parser.add_argument("--keepalive", type=float, default=30, help="SSH keepalive interval (s)")
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(parser.parse_args()))
