"""A real `easytask agent` process on a bare agent listener (`transport/agentlink.py`), its link
handed to the test: for tests of what travels on a link, without a server around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncssh

from easytask.transport.agentlink import AgentLink, AgentListener
from tests.support.procs import Proc, Procs, easytask_cmd


class OpenGate:
    """Admits every agent and hands its link to the test."""

    def __init__(self) -> None:
        self.links: asyncio.Queue[AgentLink] = asyncio.Queue()

    def check_key(self, name: str | None, fingerprint: str, public_key: str, addr: str) -> str:
        return "trusted"

    async def admit(self, link: AgentLink, hello: dict[str, Any], trusted: bool) -> bool:
        self.links.put_nowait(link)
        return True

    def refuse(self, name: str | None, fingerprint: str, addr: str, reason: str) -> None:
        raise AssertionError(f"agent refused: {reason}")

    def lost(self, link: AgentLink, exc: Exception | None) -> None:
        pass


@asynccontextmanager
async def linked_agent(
    procs: Procs, workdir: Path, name: str, *args: str
) -> AsyncIterator[tuple[AgentLink, Proc]]:
    """An agent (`args`: more of its options) dialled in to a listener of its own; its state
    directory is `workdir / name`."""
    gate = OpenGate()
    listener = AgentListener(gate, asyncssh.generate_private_key("ssh-ed25519"))
    port = await listener.start("127.0.0.1", 0)
    agent = procs.start(
        [
            *easytask_cmd(),
            "agent",
            "--server",
            f"127.0.0.1:{port}",
            "--name",
            name,
            "--state-dir",
            str(workdir / name),
            "--metrics-interval",
            "0",
            *args,
        ],
        workdir / f"{name}.log",
    )
    try:
        async with asyncio.timeout(60):
            link = await gate.links.get()
        yield link, agent
    finally:
        agent.stop(10)
        await listener.close()
