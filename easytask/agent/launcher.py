"""The agent's launcher: one small long-lived process that forks a supervisor for every run.

Starting a fresh Python interpreter for each run costs tens of milliseconds of CPU; forking this
single-threaded process, which has the supervisor already imported, costs well under one.  The
agent starts `python -m easytask.agent.launcher` once and writes one spool directory per line to
its stdin; for each, the launcher forks a child that becomes that run's supervisor (its own
session, stdin and stdout on /dev/null, stderr to `supervisor.log` in the spool) and answers
`ok PID` or `error TEXT` on stdout, in request order.  Supervisors are the launcher's children
only until it exits (with the agent, when its stdin closes): then they are orphans that go on,
exactly like supervisors the agent process started itself.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
from pathlib import Path

from easytask.agent import supervisor


def _child(spool_dir: Path) -> None:
    """In the forked child: become the run's supervisor, never return."""
    code = 0
    try:
        os.setsid()
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        err = os.open(spool_dir / "supervisor.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(err, 2)
        for fd in (null, err):
            if fd > 2:
                os.close(fd)
        supervisor.main_in(spool_dir)
    except BaseException as exc:  # report in the spool's log; never unwind into the launcher
        try:
            os.write(2, f"easytask supervisor: {exc!r}\n".encode())
        except OSError:
            pass
        code = 1
    os._exit(code)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Answer start requests until stdin closes."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    sel = selectors.DefaultSelector()
    sel.register(stdin_fd, selectors.EVENT_READ, "in")
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    buf = b""
    while True:
        for key, _ in sel.select():
            if key.data == "wake":
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
                _reap()
                continue
            data = os.read(stdin_fd, 65536)
            if not data:
                _reap()
                return 0
            buf += data
            *lines, buf = buf.split(b"\n")
            replies = []
            for raw in lines:
                spool_dir = Path(os.fsdecode(raw))
                try:
                    pid = os.fork()
                except OSError as exc:
                    replies.append(f"error cannot fork: {exc}\n")
                    continue
                if pid == 0:
                    sel.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    _child(spool_dir)
                replies.append(f"ok {pid}\n")
            try:
                os.write(stdout_fd, "".join(replies).encode())
            except OSError:
                return 0


if __name__ == "__main__":
    sys.exit(serve())
