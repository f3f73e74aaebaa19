"""Runs in flight on this server: their options, kill switches, and which jobs are open here."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from easytask.plan.become import Become, BecomeRequest
from easytask.store.db import Store
from easytask.store.models import Run


@dataclass
class JobOptions:
    """Per-job execution settings."""

    timeout: float | None = None
    pending_timeout: float = 60.0
    forks: int = 0
    grace: float = 5.0
    timeout_total: float | None = None  # the run's whole timeout (timeout is what is left)
    file_action: Any = None  # a fileops.FileAction: copy, script or fetch instead of a command
    secret_env: dict[str, str] = field(default_factory=dict)  # exported to the command, masked
    env: dict[str, str] = field(default_factory=dict)  # exported too (a playbook task's `env:`)
    masks: tuple[str, ...] = ()  # further values masked in the output (playbook secrets)
    # From the credential store, for agentless hosts (host -> value); masked, never kept on disk
    ssh_keys: dict[str, str] = field(default_factory=dict, repr=False)
    # For become (sudo -S reads it on stdin); this release only carries and masks it
    become_passwords: dict[str, str] = field(default_factory=dict, repr=False)
    become: BecomeRequest = field(default_factory=BecomeRequest)  # the job's or task's ask
    as_user: Become | None = None  # resolved for one run, with its host's variables

    def __post_init__(self) -> None:
        if self.timeout_total is None:
            self.timeout_total = self.timeout


def run_timeout_text(options: JobOptions) -> str:
    """The timeout as the user gave it, for reasons."""
    return f"{options.timeout_total:g}s" if options.timeout_total else "timeout"


def command_env(options: JobOptions) -> dict[str, str]:
    """The variables exported to a run's command: its task's `env:`, then its secrets.

    They travel apart from the command line: on the agentless channel's stdin, on an agent's
    link with the command (see Execution)."""
    return {**options.env, **options.secret_env}


def masks(options: JobOptions) -> tuple[str, ...]:
    """Every value masked in a run's output: its secret environment and further masks."""
    return (
        *options.secret_env.values(),
        *options.masks,
        *options.ssh_keys.values(),
        *options.become_passwords.values(),
    )


class KillSwitch(asyncio.Event):
    """An event that also calls back when set (a run waits for its end or a kill without a task
    per wait)."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        super().set()
        for callback in list(self._callbacks):
            callback()

    def on_set(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` when set; returns what stops that."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)


async def first_set(*switches: KillSwitch) -> None:
    """Until one of them is set: callbacks on one future, no task per wait (a job's server
    waits so on every run another server executes)."""
    woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not woken.done():
            woken.set_result(None)

    stops = [switch.on_set(wake) for switch in switches]
    try:
        await woken
    finally:
        for stop in stops:
            stop()


@dataclass
class LiveRun:
    """What the engine knows about a run while it is in flight."""

    run: Run
    kill: KillSwitch = field(default_factory=KillSwitch)
    killed_by: str = ""


class InFlight:
    """The runs this server executes now and the jobs it drives, shared by the engine's parts."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.live: dict[int, LiveRun] = {}  # runs of the jobs driven here
        self.claimed: dict[int, LiveRun] = {}  # runs executed here for another server's job
        self.running_jobs: set[int] = set()  # jobs already marked running
        # Ad hoc jobs run here: how many of their runs have not ended yet.  The run that ends
        # last ends its job in the same transaction (a client waits for that end); a job that
        # ended so is taken out.
        self.open_runs: dict[int, int] = {}

    def get(self, run_id: int) -> LiveRun | None:
        """The run in flight here under this id (its job's, or one claimed for another server)."""
        return self.live.get(run_id) or self.claimed.get(run_id)

    def executes_here(self, run: Run, claimed: bool = False) -> bool:
        """The caller executes the run itself: it is this server's, and the caller is the claim
        that took it or, when no claim here did, the job's driver."""
        return run.server in ("", self.store.owner) and (claimed or run.id not in self.claimed)


async def ended_or_stopped(
    ended: asyncio.Future[None], kill: KillSwitch, timeout: float | None
) -> bool:
    """Wait until the command ended (True), or it was killed or timed out (False).

    Callbacks on the two and a timer, not a task per wait: a fan-out waits once per run.
    """
    if ended.done():
        return True
    if kill.is_set():
        return False
    loop = asyncio.get_running_loop()
    wake: asyncio.Future[None] = loop.create_future()

    def poke(*_: Any) -> None:
        if not wake.done():
            wake.set_result(None)

    ended.add_done_callback(poke)
    unhook = kill.on_set(poke)
    timer = loop.call_later(timeout, poke) if timeout is not None else None
    try:
        await wake
    finally:
        ended.remove_done_callback(poke)
        unhook()
        if timer is not None:
            timer.cancel()
    return ended.done()
