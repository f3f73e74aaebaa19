"""The agent's control channel: one JSON request and one JSON reply on the `easytask` subsystem."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncssh

SUBSYSTEM = "easytask"


async def request(
    conn: asyncssh.SSHClientConnection, op: str, timeout: float = 15.0, **args: Any
) -> dict[str, Any]:
    """Send one control request to an agent and return its reply."""
    async with asyncio.timeout(timeout):
        proc = await conn.create_process(subsystem=SUBSYSTEM, encoding="utf-8")
        try:
            proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            proc.stdin.write_eof()
            line = await proc.stdout.readline()
        finally:
            proc.close()
    if not line:
        raise ConnectionError(f"agent gave no answer to {op!r}")
    reply: dict[str, Any] = json.loads(line)
    if "error" in reply:
        raise RuntimeError(f"agent refused {op!r}: {reply['error']}")
    return reply
