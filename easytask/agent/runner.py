"""Runs commands for the agent: each in its own process group, output streamed in order."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field

log = logging.getLogger("easytask.agent")

CHUNK = 65536


@dataclass
class Job:
    """A command the agent started."""

    key: str
    command: str
    proc: asyncio.subprocess.Process
    cancelled_by: str | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Runner:
    """Starts, tracks and terminates the agent's commands."""

    def __init__(self, shell: str = "/bin/sh", cwd: str | None = None) -> None:
        self.shell = shell
        self.cwd = cwd or os.path.expanduser("~")
        self.jobs: dict[str, Job] = {}

    @property
    def running(self) -> int:
        """How many commands are running now."""
        return sum(1 for job in self.jobs.values() if not job.done.is_set())

    async def start(self, key: str, command: str, extra_env: dict[str, str]) -> Job:
        """Start a command in a new session (so it has its own process group)."""
        env = dict(os.environ)
        env.update(extra_env)
        proc = await asyncio.create_subprocess_exec(
            self.shell,
            "-c",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            cwd=self.cwd if os.path.isdir(self.cwd) else "/",
            env=env,
        )
        job = Job(key=key, command=command, proc=proc)
        self.jobs[key] = job
        return job

    def finished(self, job: Job) -> None:
        """Forget a job once its status was delivered."""
        job.done.set()
        if self.jobs.get(job.key) is job:
            del self.jobs[job.key]

    async def terminate(self, key: str, grace: float, by: str = "") -> bool:
        """TERM the job's process group, KILL it after `grace` seconds; False if unknown."""
        job = self.jobs.get(key)
        if job is None:
            return False
        job.cancelled_by = by or "request"
        pgid = job.proc.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await job.proc.wait()
        except TimeoutError:
            pass
        # The leader may be gone while children of the group live on: KILL the group anyway.
        _signal_group(pgid, signal.SIGKILL)
        return True

    async def terminate_all(self, grace: float) -> None:
        """Stop every running job (agent shutdown)."""
        keys = list(self.jobs)
        await asyncio.gather(*(self.terminate(k, grace, "agent stop") for k in keys))


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
