"""The per-run supervisor: runs one command detached from the agent and spools its output.

`python -m easytask.agent.supervisor SPOOL_DIR` reads `cmd.json`, starts the command in its own
session, numbers its output lines exactly as the scheduler does (same line rules), appends them to
`out`, mirrors them to stdout while someone reads it, and writes `exit.json` last.  It outlives the
agent process, so a job keeps running and keeps its output when the agent or its link goes away.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

from easytask.agent.spool import Record, Spool
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
    (spool_dir / "super.pid").write_text(str(os.getpid()))
    env = dict(os.environ)
    env.update(spec.get("env") or {})
    cwd = spec.get("cwd") or os.path.expanduser("~")
    if not os.path.isdir(cwd):
        cwd = "/"
    out_fh = open(spool.out_path, "ab", buffering=0)
    mirror = sys.stdout.buffer
    mirror_ok = True
    seq = 0
    stored = 0
    dropped_bytes = 0
    dropped_lines = 0
    total_bytes = 0

    def emit(stream: str, items: list[bytes]) -> None:
        nonlocal seq, stored, dropped_bytes, dropped_lines, mirror_ok
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
        if mirror_ok:
            try:
                mirror.write(blob)
                mirror.flush()
            except (BrokenPipeError, OSError):
                mirror_ok = False

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
    return 0


def main() -> int:
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return supervise(Path(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
