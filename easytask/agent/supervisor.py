"""The agent's supervisor: one long-lived process that runs every command detached from the agent.

The agent starts `python -m easytask.agent.supervisor` once (in its own session) and writes one
spool directory per line to its stdin; the supervisor answers `ok PGID` or `error TEXT` per line,
in order.  For each spool it reads `cmd.json`, starts the command in its own session, numbers its
output lines exactly as the scheduler does (same line rules), appends them to `out`, pokes the
`notify` FIFO (when the agent holds it open) after each write, and writes `exit.json` last.

It outlives the agent process: when its stdin closes (the agent stopped or died) it takes no new
runs but sees the ones it has to their end, so a job keeps running and keeps its output when the
agent or its link goes away; the next agent process starts a supervisor of its own for new runs.
One process for all runs costs a fork and exec of the shell per run, instead of an interpreter.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easytask.agent.spool import Record, Spool, process_identity
from easytask.lines import MAX_LINE_BYTES

CHUNK = 65536


class _Splitter:
    """Raw-bytes twin of `easytask.lines.LineSplitter`: same cut points, bytes kept as sent."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        start = 0
        while True:
            nl = self.buf.find(b"\n", start)
            if nl < 0:
                break
            line = bytes(self.buf[start : nl + 1])
            # a line longer than the limit is cut as the scheduler cuts it
            body = line[:-1]
            if body.endswith(b"\r"):
                body = body[:-1]
            while len(body) > MAX_LINE_BYTES:
                out.append(line[:MAX_LINE_BYTES])
                line = line[MAX_LINE_BYTES:]
                body = body[MAX_LINE_BYTES:]
            out.append(line)
            start = nl + 1
        if start:
            del self.buf[:start]
        while len(self.buf) >= MAX_LINE_BYTES:
            out.append(bytes(self.buf[:MAX_LINE_BYTES]))
            del self.buf[:MAX_LINE_BYTES]
        return out

    def tail(self) -> list[bytes]:
        if not self.buf:
            return []
        data = bytes(self.buf)
        self.buf.clear()
        return [data]


@dataclass
class _Run:
    """One command in flight and its spool."""

    spool: Spool
    proc: subprocess.Popen[bytes]
    out: Any  # the spool's `out`, opened for appending
    notify: _Notifier
    cap: int
    splitters: dict[str, _Splitter] = field(
        default_factory=lambda: {"stdout": _Splitter("stdout"), "stderr": _Splitter("stderr")}
    )
    open_streams: int = 2
    seq: int = 0
    stored: int = 0
    total_bytes: int = 0
    dropped_bytes: int = 0
    dropped_lines: int = 0

    def emit(self, stream: str, items: list[bytes]) -> None:
        """Number lines and append them to the spool (past the cap they are only counted)."""
        blob = bytearray()
        for data in items:
            if self.cap and self.stored + len(data) > self.cap:
                self.dropped_bytes += len(data)
                self.dropped_lines += 1
                continue
            self.seq += 1
            self.stored += len(data)
            blob += Record(self.seq, stream, data).encode()
        if blob:
            self.out.write(blob)
            self.notify.poke()

    def exit_record(self, rc: int) -> dict[str, Any]:
        sig = None
        code: int | None = rc
        if rc < 0:
            try:
                sig = signal.Signals(-rc).name.removeprefix("SIG")
            except ValueError:
                sig = str(-rc)
            code = None
        return {
            "exit_code": code,
            "signal": sig,
            "lines": self.seq,
            "bytes": self.total_bytes,
            "dropped_bytes": self.dropped_bytes,
            "dropped_lines": self.dropped_lines,
        }


class Supervisor:
    """Starts commands and follows all of them from one selector loop."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.identity = process_identity(os.getpid())
        self.draining: list[_Run] = []  # output closed, process not reaped yet

    @property
    def busy(self) -> bool:
        return bool(self.draining) or any(
            isinstance(key.data, tuple) for key in self.sel.get_map().values()
        )

    def start(self, spool_dir: Path) -> int:
        """Start the command of one spool; the command's process group id (0 if it failed)."""
        spec = json.loads((spool_dir / "cmd.json").read_text())
        spool = Spool(spool_dir.parent, spool_dir.name)
        (spool_dir / "super.pid").write_text(self.identity)
        env = dict(os.environ)
        env.update(spec.get("env") or {})
        cwd = spec.get("cwd") or os.path.expanduser("~")
        if not os.path.isdir(cwd):
            cwd = "/"
        out = open(spool.out_path, "ab", buffering=0)
        notify = _Notifier(spool_dir / "notify")
        try:
            proc = subprocess.Popen(
                [spec.get("shell") or "/bin/sh", "-c", spec["command"]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                cwd=cwd,
                env=env,
                close_fds=False,  # every descriptor we open is non-inheritable already
            )
        except OSError as exc:
            text = f"easytask agent: cannot start command: {exc}\n".encode()
            out.write(Record(1, "stderr", text).encode())
            out.close()
            spool.write_exit(
                {
                    "exit_code": 127,
                    "signal": None,
                    "lines": 1,
                    "bytes": 0,
                    "dropped_bytes": 0,
                    "dropped_lines": 0,
                }
            )
            notify.close()
            return 0
        (spool_dir / "pgid").write_text(str(proc.pid))
        run = _Run(spool, proc, out, notify, int(spec.get("cap") or 0))
        assert proc.stdout is not None and proc.stderr is not None
        self.sel.register(proc.stdout, selectors.EVENT_READ, (run, "stdout"))
        self.sel.register(proc.stderr, selectors.EVENT_READ, (run, "stderr"))
        return proc.pid

    def readable(self, run: _Run, stream: str, fileobj: Any) -> None:
        data = os.read(fileobj.fileno(), CHUNK)
        if not data:
            self.sel.unregister(fileobj)
            fileobj.close()
            run.open_streams -= 1
            if not run.open_streams:
                # partial last lines come last, stdout first: the scheduler numbers them alike
                for name in ("stdout", "stderr"):
                    tail = run.splitters[name].tail()
                    if tail:
                        run.emit(name, tail)
                self.draining.append(run)
                self.reap()
            return
        run.total_bytes += len(data)
        lines = run.splitters[stream].feed(data)
        if lines:
            run.emit(stream, lines)

    def reap(self) -> None:
        """Finish runs whose output is closed and whose process has exited."""
        still: list[_Run] = []
        for run in self.draining:
            rc = run.proc.poll()
            if rc is None:
                still.append(run)
                continue
            run.out.close()
            run.spool.write_exit(run.exit_record(rc))
            run.notify.close()
        self.draining = still


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Start runs named on stdin until it closes, then see the last of them to their end."""
    # its own session: no terminal signals reach it (commands get the default dispositions)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    sup = Supervisor()
    sup.sel.register(wake_r, selectors.EVENT_READ, "wake")
    sup.sel.register(stdin_fd, selectors.EVENT_READ, "in")
    taking = True
    buf = b""
    while taking or sup.busy:
        # a command that closed its output but has not exited yet is checked every second
        for key, _ in sup.sel.select(timeout=1.0 if sup.draining else None):
            if key.data == "wake":
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            elif key.data == "in":
                data = os.read(stdin_fd, CHUNK)
                if not data:
                    sup.sel.unregister(stdin_fd)
                    taking = False
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                replies = []
                for raw in lines:
                    try:
                        replies.append(f"ok {sup.start(Path(os.fsdecode(raw)))}\n")
                    except Exception as exc:  # one bad spool must not stop the others
                        replies.append("error " + str(exc).replace("\n", " ") + "\n")
                try:
                    os.write(stdout_fd, "".join(replies).encode())
                except OSError:
                    pass
            else:
                run, stream = key.data
                try:
                    sup.readable(run, stream, key.fileobj)
                except OSError as exc:
                    print(f"easytask supervisor: {run.spool.key}: {exc}", file=sys.stderr)
        sup.reap()
    return 0


class _Notifier:
    """Pokes the agent through the spool's FIFO; silent when nobody holds it open."""

    def __init__(self, path: Path) -> None:
        self.fd: int | None = None
        try:
            self.fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # no FIFO, or no reader (the agent is gone): the agent polls instead
            self.fd = None

    def poke(self) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, b".")
        except BlockingIOError:
            pass  # the pipe is full of pokes the agent has not read yet: one more adds nothing
        except OSError:
            self.close()

    def close(self) -> None:
        """A last poke (exit.json is written), then let go of the FIFO."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        try:
            os.write(fd, b"!")
        except OSError:
            pass
        os.close(fd)


if __name__ == "__main__":
    sys.exit(serve())
