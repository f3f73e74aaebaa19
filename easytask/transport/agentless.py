"""Agentless hosts: pooled `asyncssh.connect` links to a host's own sshd."""

from __future__ import annotations

import asyncio
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from easytask.errors import ConnectError
from easytask.transport import executor


@dataclass(frozen=True)
class SSHTarget:
    """Where and as whom to reach an agentless host (from `ansible_*` vars)."""

    host: str
    port: int = 22
    user: str | None = None
    key_file: str | None = None
    known_hosts: str | None = None
    password: str | None = field(default=None, repr=False)
    client_key: str | None = field(default=None, repr=False)  # a private key's text, not a file


def pidfile_for(run_key: str) -> str:
    """The remote file that holds a command's process group id while it runs."""
    return f"/tmp/.easytask-{run_key}.pid"


def wrap_command(command: str, run_key: str) -> str:
    """Run a command in its own session (its own process group) and note the group id.

    `setsid -w` starts a new session and returns the command's status; the pid file lets a
    second channel signal the whole group.  The outer shell removes the pid file afterwards.
    """
    pidfile = shlex.quote(pidfile_for(run_key))
    inner = 'echo $$ >"$0"; exec /bin/sh -c "$1"'
    return (
        f'f={pidfile}; setsid -w /bin/sh -c {shlex.quote(inner)} "$f" {shlex.quote(command)}'
        '; rc=$?; rm -f "$f"; exit $rc'
    )


def terminate_command(run_key: str, grace: float) -> str:
    """A shell command that sends TERM to the run's group, then KILL after a grace period.

    A run is recorded as started once its channel is open, a moment before its shell wrote the
    pid file: a terminate that comes in between waits (up to the grace period) for the file.
    `kill -SIG -PGID` without `--`: dash, a common /bin/sh and login shell, refuses `--`.
    """
    pidfile = shlex.quote(pidfile_for(run_key))
    steps = max(int(grace * 10), 1)
    return (
        f'f={pidfile}; i=0; while [ ! -s "$f" ] && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); '
        'done; [ -s "$f" ] || exit 0; g=$(cat "$f"); kill -TERM -$g 2>/dev/null || exit 0; '
        f"i=0; while [ $i -lt {steps} ] && kill -0 -$g 2>/dev/null; do sleep 0.1; i=$((i+1)); done; "
        "kill -KILL -$g 2>/dev/null; exit 0"
    )


class SSHPool:
    """Keeps one connection per target open and reuses it for every run."""

    def __init__(self, connect_timeout: float = 15.0, keepalive: float = 15.0) -> None:
        self._conns: dict[SSHTarget, asyncssh.SSHClientConnection] = {}
        self._locks: dict[SSHTarget, asyncio.Lock] = {}
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive

    async def get(self, target: SSHTarget) -> asyncssh.SSHClientConnection:
        """An open connection to the target, connecting if needed."""
        lock = self._locks.setdefault(target, asyncio.Lock())
        async with lock:
            conn = self._conns.get(target)
            if conn is not None and not conn.is_closed():
                return conn
            conn = await self._connect(target)
            self._conns[target] = conn
            return conn

    async def _connect(self, target: SSHTarget) -> asyncssh.SSHClientConnection:
        options: dict[str, object] = {
            "connect_timeout": self.connect_timeout,
            "keepalive_interval": self.keepalive,
            "keepalive_count_max": 3,
        }
        if target.user:
            options["username"] = target.user
        if target.client_key:  # from the credential store: this key, not a file's
            try:
                options["client_keys"] = [asyncssh.import_private_key(target.client_key)]
            except (asyncssh.KeyImportError, ValueError) as exc:
                raise ConnectError(f"the host's SSH key from the credential store: {exc}") from exc
        elif target.key_file:
            options["client_keys"] = [str(Path(target.key_file).expanduser())]
        if target.known_hosts:
            options["known_hosts"] = str(Path(target.known_hosts).expanduser())
        if target.password:
            options["password"] = target.password
        try:
            return await asyncssh.connect(target.host, target.port, **options)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            reason = str(exc) or type(exc).__name__
            raise ConnectError(
                f"cannot connect to {target.user + '@' if target.user else ''}"
                f"{target.host}:{target.port}: {reason}"
            ) from exc

    def drop(self, target: SSHTarget) -> None:
        """Forget a connection that failed."""
        conn = self._conns.pop(target, None)
        if conn is not None:
            conn.close()

    async def terminate(self, target: SSHTarget, run_key: str, grace: float) -> None:
        """Stop a run's whole process group on the host."""
        conn = await self.get(target)
        await executor.run_collect(conn, terminate_command(run_key, grace), timeout=2 * grace + 15)

    async def close(self) -> None:
        """Close every pooled connection."""
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            await conn.wait_closed()
