"""Real processes for tests and benchmarks: free ports, deadlines, process groups, /proc."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent.parent


class WaitTimeout(AssertionError, TimeoutError):
    """`wait_until` ran out of time: a failed assertion in a test, a timeout in a benchmark."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `cond` until it returns something truthy; raise WaitTimeout after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception as exc:  # the condition may raise until the thing is up
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise WaitTimeout(
        f"timed out after {timeout:g}s waiting for {what}" + (f": {last_exc!r}" if last_exc else "")
    )


class Proc:
    """A child process in its own process group, stopped with its whole group."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self) -> None:
        """SIGKILL the process itself (not its group: commands it started live on)."""
        try:
            os.kill(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        """TERM the group, wait, then KILL the group."""
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def output(self) -> str:
        """Everything the process wrote so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def tail(self, lines: int = 20) -> str:
        """The last lines the process wrote ("" when its log cannot be read)."""
        try:
            return "\n".join(self.output().splitlines()[-lines:])
        except OSError:
            return ""


class Procs(list[Proc]):
    """Every process a test or benchmark starts; `stop_all` ends them in reverse order."""

    def __init__(self, stop_timeout: float = 10.0) -> None:
        super().__init__()
        self.stop_timeout = stop_timeout

    def start(self, args: list[str], log_path: Path, **kwargs: Any) -> Proc:
        proc = Proc(args, log_path, **kwargs)
        self.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """Stop one process and forget it."""
        proc.stop(self.stop_timeout)
        if proc in self:
            self.remove(proc)

    def stop_all(self) -> None:
        while self:
            self.pop().stop(self.stop_timeout)


def easytask_cmd(*args: str) -> list[str]:
    """`python -m easytask ARGS` with this interpreter."""
    return [sys.executable, "-m", "easytask", *args]


def easytask_cli(*args: str) -> list[str]:
    """The installed `easytask` entry point next to this interpreter, else `python -m easytask`."""
    script = Path(sys.executable).parent / "easytask"
    if script.exists():
        return [str(script), *args]
    return easytask_cmd(*args)


def children_of(pid: int) -> list[int]:
    """Direct child processes of a process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    """A process's command line with spaces between the arguments."""
    try:
        return (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode().strip()
    except OSError:
        return ""
