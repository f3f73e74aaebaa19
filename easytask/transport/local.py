"""The server's own host (`ansible_connection: local`): a command as a local process.

The executor's contract, as over SSH (`transport.executor`): output chunks in arrival order,
the exit code or the signal that ended the command, flow control, and a terminate that sends TERM
to the command's whole process group and KILL after a grace period. The command runs as the
server's user in the server's user's home, with a clean environment (`KEPT_VARIABLES`): the
server's own settings and secrets (`EASYTASK_*`) never reach it. Secret values come on stdin, as
on agentless hosts (`agentless.env_on_stdin`), never in the command line.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from easytask.facts import GATHER_COMMAND, parse_gathered
from easytask.loglines import STDERR, STDOUT
from easytask.transport.executor import DataCallback, ExecResult
from easytask.transport.invscript import script_environment

__all__ = ["LocalExecution", "LocalHost"]


class _Pipes:
    """Pauses and resumes reading the command's output (the executor's `channel`)."""

    def __init__(self, transport: asyncio.SubprocessTransport) -> None:
        self._transport = transport

    def _each(self, action: str) -> None:
        for fd in (1, 2):
            pipe = self._transport.get_pipe_transport(fd)
            if isinstance(pipe, asyncio.ReadTransport) and not pipe.is_closing():
                getattr(pipe, action)()

    def pause_reading(self) -> None:
        """Stop reading output until `resume_reading` (the pipes fill, the command waits)."""
        self._each("pause_reading")

    def resume_reading(self) -> None:
        """Read output again."""
        self._each("resume_reading")


class _Protocol(asyncio.SubprocessProtocol):
    def __init__(self, on_data: DataCallback, done: asyncio.Future[None]) -> None:
        self._on_data = on_data
        self._done = done
        self._open = {1, 2}
        self._exited = False
        self.transport: asyncio.SubprocessTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport

    def pipe_data_received(self, fd: int, data: bytes | bytearray) -> None:
        self._on_data(STDERR if fd == 2 else STDOUT, bytes(data))

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._open.discard(fd)
        self._check()

    def process_exited(self) -> None:
        self._exited = True
        self._check()

    def _check(self) -> None:
        # ended once the command exited and its output is all read (as an SSH channel closes)
        if self._exited and not self._open and not self._done.done():
            self._done.set_result(None)


class LocalExecution:
    """A started local command; await `wait()` for its result (as `executor.Execution`)."""

    def __init__(self, protocol: _Protocol, done: asyncio.Future[None], pgid: int) -> None:
        self._protocol = protocol
        self._done = done
        self.pgid = pgid

    @property
    def ended(self) -> asyncio.Future[None]:
        """Done when the command ended and its output was read (never cancel it)."""
        return self._done

    @property
    def channel(self) -> _Pipes | None:
        """Flow control: pause_reading / resume_reading."""
        transport = self._protocol.transport
        return _Pipes(transport) if transport is not None else None

    async def wait(self) -> ExecResult:
        """Wait until the command ends: its exit code, or the signal that ended it."""
        if not self._done.done():
            await asyncio.shield(self._done)
        transport = self._protocol.transport
        code = transport.get_returncode() if transport is not None else None
        if code is None:
            return ExecResult(lost=True, error="the command's process was lost")
        if code < 0:
            try:
                name = signal.Signals(-code).name.removeprefix("SIG")
            except ValueError:
                name = str(-code)
            return ExecResult(signal=name)
        return ExecResult(exit_code=code)

    def close(self) -> None:
        """Stop reading the command's output (the command keeps its own fate)."""
        transport = self._protocol.transport
        if transport is not None and self._done.done():
            transport.close()


class LocalHost:
    """Starts commands on the server's own host, each in its own session (process group)."""

    def __init__(self) -> None:
        self._groups: dict[str, int] = {}  # a run's key -> its process group

    async def start(
        self, key: str, command: str, on_data: DataCallback, stdin: bytes = b""
    ) -> LocalExecution:
        """Run `command` with `/bin/sh -c` in a new session; `stdin` is written first, then
        stdin is closed. Output chunks go to `on_data` as they arrive."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        env = script_environment()
        home = env.get("HOME") or str(Path.home())
        cwd = home if os.path.isdir(home) else "/"
        transport, protocol = await loop.subprocess_exec(
            lambda: _Protocol(on_data, done),
            "/bin/sh",
            "-c",
            command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        pipe: Any = transport.get_pipe_transport(0)
        if pipe is not None:
            if stdin:
                pipe.write(stdin)
            pipe.close()  # after the bytes are written: the command reads EOF next
        pgid = transport.get_pid()
        self._groups[key] = pgid
        done.add_done_callback(lambda _: self._groups.pop(key, None))
        return LocalExecution(protocol, done, pgid)

    async def terminate(self, key: str, grace: float) -> None:
        """TERM to the run's whole process group, then KILL after `grace` seconds to what is
        left of it."""
        pgid = self._groups.get(key)
        if pgid is None or not _signal(pgid, signal.SIGTERM):
            return
        loop = asyncio.get_running_loop()
        end = loop.time() + max(grace, 0.1)
        while loop.time() < end and _signal(pgid, 0):
            await asyncio.sleep(0.1)
        _signal(pgid, signal.SIGKILL)

    async def gather_facts(self) -> dict[str, Any]:
        """This host's facts, read as an agentless host's are (`facts.GATHER_COMMAND`)."""
        code, text = await self.run_collect(GATHER_COMMAND, timeout=60)
        if code:
            raise RuntimeError(f"exit code {code}")
        return parse_gathered(text)

    async def run_collect(self, command: str, timeout: float = 60.0) -> tuple[int | None, str]:
        """Run a short helper command: its exit code and stdout (stderr dropped)."""
        out: list[bytes] = []

        def on_data(stream: str, data: bytes) -> None:
            if stream == STDOUT:
                out.append(data)

        key = f"collect-{id(out)}"
        execution = await self.start(key, command, on_data)
        try:
            async with asyncio.timeout(timeout):
                result = await execution.wait()
        except TimeoutError:
            await self.terminate(key, 1.0)
            raise
        finally:
            execution.close()
        return result.exit_code, b"".join(out).decode("utf-8", "replace")


def _signal(pgid: int, sig: int) -> bool:
    """Send `sig` to a process group; False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member became another user (sudo): TERM reached what it could
        return True
    return True
