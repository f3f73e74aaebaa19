"""The per-run supervisor: runs one command detached from the agent and spools its output.

The agent's launcher (`easytask.agent.launcher`) forks one per run; `python -m
easytask.agent.supervisor SPOOL_DIR` does the same from a fresh interpreter.  It reads `cmd.json`,
starts the command in its own session, numbers its output lines exactly as the scheduler does (same
line rules), appends them to `out`, pokes the `notify` FIFO (when the agent holds it open) after
each write, and writes `exit.json` last.  It outlives the agent process, so a job keeps running and
keeps its output when the agent or its link goes away.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

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


def supervise(spool_dir: Path) -> int:
    """Run the command described in spool_dir/cmd.json to the end; return 0."""
    spec = json.loads((spool_dir / "cmd.json").read_text())
    spool = Spool(spool_dir.parent, spool_dir.name)
    cap = int(spec.get("cap") or 0)
    (spool_dir / "super.pid").write_text(process_identity(os.getpid()))
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    cwd = spec.get("cwd") or os.path.expanduser("~")
    if not os.path.isdir(cwd):
        cwd = "/"
    out_fh = open(spool.out_path, "ab", buffering=0)
    notify = _Notifier(spool_dir / "notify")
    seq = 0
    stored = 0
    dropped_bytes = 0
    dropped_lines = 0
    total_bytes = 0

    def emit(stream: str, items: list[bytes]) -> None:
        nonlocal seq, stored, dropped_bytes, dropped_lines
        blob = bytearray()
        for data in items:
            if cap and stored + len(data) > cap:
                dropped_bytes += len(data)
                dropped_lines += 1
                continue
            seq += 1
            stored += len(data)
            blob += Record(seq, stream, data).encode()
        if not blob:
            return
        out_fh.write(blob)
        notify.poke()

    try:
        proc = subprocess.Popen(
            [spec.get("shell") or "/bin/sh", "-c", spec["command"]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            cwd=cwd,
            env=env,
        )
    except OSError as exc:
        emit("stderr", [f"easytask agent: cannot start command: {exc}\n".encode()])
        spool.write_exit(
            {
                "exit_code": 127,
                "signal": None,
                "lines": seq,
                "bytes": 0,
                "dropped_bytes": 0,
                "dropped_lines": 0,
            }
        )
        notify.close()
        return 0
    (spool_dir / "pgid").write_text(str(proc.pid))
    assert proc.stdout is not None and proc.stderr is not None
    splitters = {"stdout": _Splitter("stdout"), "stderr": _Splitter("stderr")}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
    sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
    open_streams = 2
    while open_streams:
        for key, _ in sel.select():
            stream = key.data
            data = os.read(key.fd, CHUNK)
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            total_bytes += len(data)
            lines = splitters[stream].feed(data)
            if lines:
                emit(stream, lines)
    # partial last lines come last, stdout first: the scheduler numbers them the same way
    for stream in ("stdout", "stderr"):
        tail = splitters[stream].tail()
        if tail:
            emit(stream, tail)
    rc = proc.wait()
    out_fh.close()
    sig = None
    code: int | None = rc
    if rc < 0:
        try:
            sig = signal.Signals(-rc).name.removeprefix("SIG")
        except ValueError:
            sig = str(-rc)
        code = None
    spool.write_exit(
        {
            "exit_code": code,
            "signal": sig,
            "lines": seq,
            "bytes": total_bytes,
            "dropped_bytes": dropped_bytes,
            "dropped_lines": dropped_lines,
        }
    )
    notify.close()
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


def main_in(spool_dir: Path) -> int:
    """Supervise one run in this process (a fresh interpreter or a child of the launcher)."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return supervise(spool_dir)


def main() -> int:
    return main_in(Path(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
