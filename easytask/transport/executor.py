"""Run one command on one SSH connection and stream its output in arrival order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncssh

from easytask.loglines import STDERR, STDOUT

# An exit-signal name of our own (RFC 4254 6.10 allows `name@domain`): the agent ends a run's
# channel with it when the run has counts to report; its message is the run's exit record (JSON).
STATS_SIGNAL = "stats@easytask"

# An agent that says so in its hello (`EXEC_HEADER_FEATURE` among its `features`) takes a
# command's variables on the command's first line, `#easytask-env {JSON}`, when its session got
# no `env` request: one SSH message (two, with the SSH_MSG_IGNORE asyncssh sends before each on
# an encrypted link) less per run. To a shell the line is a comment.
EXEC_HEADER = "#easytask-env "
EXEC_HEADER_FEATURE = "exec-header"

# Called for every chunk, in the order the far side sent them: (stream, data).
DataCallback = Callable[[str, bytes], None]


@dataclass
class ExecResult:
    """How a command ended: exit code, or signal, or a lost connection."""

    exit_code: int | None = None
    signal: str | None = None
    lost: bool = False
    error: str | None = None
    stats: dict[str, Any] | None = None  # an agent's account of the run, when it had one

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.exit_code == 0 and not self.lost


class _Session(asyncssh.SSHClientSession[bytes]):
    """Collects stdout/stderr chunks in order and the exit status."""

    def __init__(self, on_data: DataCallback) -> None:
        self._on_data = on_data
        self.result = ExecResult()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.chan: asyncssh.SSHClientChannel[bytes] | None = None
        self._got_status = False

    def connection_made(self, chan: asyncssh.SSHClientChannel[bytes]) -> None:
        self.chan = chan

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        stream = STDERR if datatype == asyncssh.EXTENDED_DATA_STDERR else STDOUT
        self._on_data(stream, data)

    def exit_status_received(self, status: int) -> None:
        self._got_status = True
        self.result.exit_code = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self._got_status = True
        if signal == STATS_SIGNAL:
            # An agent's exit with something to tell (output it cut, a run it lost): the exit
            # code or signal travel inside, with the counts.
            try:
                stats = json.loads(msg)
                self.result.exit_code = stats.get("exit_code")
                self.result.signal = stats.get("signal")
                self.result.stats = stats
                return
            except (ValueError, AttributeError):
                pass
        self.result.signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._got_status:
            # A channel closed without an exit status means the link died: never success.
            self.result.lost = True
            self.result.error = str(exc) if exc else "connection lost"
        if not self.done.done():
            self.done.set_result(None)


class Execution:
    """A started command; await `wait()` for its result."""

    def __init__(self, session: _Session) -> None:
        self._session = session

    @property
    def ended(self) -> asyncio.Future[None]:
        """Done when the command ended or the link was lost (never cancel it)."""
        return self._session.done

    @property
    def channel(self) -> asyncssh.SSHClientChannel[bytes] | None:
        """The SSH channel (for flow control: pause_reading / resume_reading)."""
        return self._session.chan

    @property
    def result(self) -> ExecResult:
        """How the command ended, once `ended` is done."""
        return self._session.result

    async def wait(self) -> ExecResult:
        """Wait until the command ends or the link is lost."""
        if not self._session.done.done():
            await asyncio.shield(self._session.done)
        return self._session.result

    def close(self) -> None:
        """Close the channel (the remote command keeps its own fate)."""
        if self._session.chan is not None:
            self._session.chan.close()


def env_header(env: Mapping[str, str]) -> str:
    """The first line of a command that carries its variables (see EXEC_HEADER)."""
    return EXEC_HEADER + json.dumps(dict(env), separators=(",", ":")) + "\n"


def split_env_header(command: str) -> tuple[dict[str, str], str]:
    """A command's variables from its first line (none if it has no such line) and the
    command after it; ValueError if the line is there but not an object of strings."""
    if not command.startswith(EXEC_HEADER):
        return {}, command
    first, _, rest = command.partition("\n")
    env = json.loads(first[len(EXEC_HEADER) :])
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("the command's variables must be an object of strings")
    return env, rest


async def start(
    conn: asyncssh.SSHClientConnection,
    command: str,
    on_data: DataCallback,
    env: Mapping[str, str] | None = None,
    stdin: bytes = b"",
    term_modes: Mapping[int, int] | None = None,
) -> Execution:
    """Open a session running `command`; output chunks go to `on_data` as they arrive.

    `stdin`: bytes written to the command's stdin at once (sent with the request, no round
    trip more); the channel stays open after them, as it does without. With `term_modes`, the
    session gets a pseudo-terminal in those modes (its output is then all stdout)."""
    holder: list[_Session] = []

    def factory() -> _Session:
        session = _Session(on_data)
        holder.append(session)
        return session

    env_arg: dict[str | bytes, str | bytes] = {k: v for k, v in (env or {}).items()}
    pty: dict[str, Any] = {}
    if term_modes is not None:
        pty = {"term_type": "dumb", "term_modes": dict(term_modes), "request_pty": "force"}
    chan, _ = await conn.create_session(factory, command, env=env_arg, encoding=None, **pty)
    if stdin:
        chan.write(stdin)
    return Execution(holder[0])


async def run_collect(
    conn: asyncssh.SSHClientConnection, command: str, timeout: float = 30.0
) -> tuple[ExecResult, bytes, bytes]:
    """Run a short helper command and return its result, stdout and stderr."""
    out: list[bytes] = []
    err: list[bytes] = []

    def on_data(stream: str, data: bytes) -> None:
        (err if stream == STDERR else out).append(data)

    execution = await start(conn, command, on_data)
    try:
        async with asyncio.timeout(timeout):
            result = await execution.wait()
    finally:
        execution.close()
    return result, b"".join(out), b"".join(err)
