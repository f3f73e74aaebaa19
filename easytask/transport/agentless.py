"""Agentless hosts: pooled `asyncssh.connect` links to a host's own sshd."""

from __future__ import annotations

import asyncio
import shlex
from collections.abc import Mapping
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
    jump: SSHTarget | None = None  # the host this one is reached through (`ProxyJump`)


def pidfile_for(run_key: str) -> str:
    """The remote file that holds a command's process group id while it runs."""
    return f"/tmp/.easytask-{run_key}.pid"


def env_on_stdin(env: Mapping[str, str]) -> tuple[str, bytes]:
    """Shell text that reads environment values from stdin and exports them, and those bytes.

    The values never appear in a command line (which `ps` shows to every user of the host):
    the shell's `read` builtin takes them, one line each (a value of several lines over as
    many reads), and exactly those bytes, so what follows on stdin stays the command's.
    """
    if not env:
        return "", b""
    reads: list[str] = []
    lines: list[str] = []
    for name, value in env.items():
        parts = value.split("\n")
        reads.append(f"IFS= read -r {name}")
        for _ in parts[1:]:
            reads.append(f'IFS= read -r _et_l && {name}="${{{name}}}${{_et_nl}}$_et_l"')
        lines.extend(parts)
    multi = len(lines) > len(env)
    text = (
        ("_et_nl='\n'; " if multi else "")
        + "{ "
        + " && ".join(reads)
        + "; } || { echo 'easytask: the environment did not arrive on stdin' >&2; exit 125; }; "
        + "export "
        + " ".join(env)
        + ("; unset _et_l _et_nl" if multi else "")
        + "; "
    )
    return text, ("\n".join(lines) + "\n").encode()


def wrap_command(command: str, run_key: str, env_text: str = "") -> str:
    """Run a command in its own session (its own process group) and note the group id.

    `setsid -w` starts a new session and returns the command's status; the pid file lets a
    second channel signal the whole group.  The outer shell removes the pid file afterwards.
    `env_text` (from `env_on_stdin`) comes first: the exported values reach the command.
    """
    pidfile = shlex.quote(pidfile_for(run_key))
    inner = 'echo $$ >"$0"; exec /bin/sh -c "$1"'
    return (
        f"{env_text}f={pidfile}; "
        f'setsid -w /bin/sh -c {shlex.quote(inner)} "$f" {shlex.quote(command)}'
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
        if target.jump is not None:  # a direct-tcpip channel of the jump host's connection
            options["tunnel"] = await self.get(target.jump)
        try:
            return await asyncssh.connect(target.host, target.port, **options)
        except (TimeoutError, OSError, asyncssh.Error) as exc:
            reason = str(exc) or type(exc).__name__
            via = f" through {target.jump.host}:{target.jump.port}" if target.jump else ""
            raise ConnectError(
                f"cannot connect to {target.user + '@' if target.user else ''}"
                f"{target.host}:{target.port}{via}: {reason}"
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
