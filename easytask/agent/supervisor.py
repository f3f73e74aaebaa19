"""The agent's supervisor: one long-lived process that runs every command detached from the agent.

The agent starts `python -m easytask.agent.supervisor` once (in its own session) and writes one
JSON request per line to its stdin: `{"spool": SPOOL, "spec": {command, env, cwd, cap}}` (env is
the command's whole environment), where
SPOOL is `STATE/spool/RUN-KEY` (the agent has created `RUN-KEY.out`).  For
each, the supervisor starts the command in its own session and answers `ok PGID` or `error TEXT`
on stdout, in request order.  It numbers the command's output lines exactly as the scheduler does
(same line rules), appends them to the spool's output file after a first record saying who runs
the command, appends the exit record last and renames the file `.done`, and tells the agent on the same
stdout: `p SPOOL` (new records) and `x SPOOL` (the command ended).

It outlives the agent process: when its stdin closes (the agent stopped or died) it takes no new
runs but sees the ones it has to their end, so a job keeps running and keeps its output when the
agent or its link goes away; the next agent process starts a supervisor of its own for new runs
and follows the old ones from their spools.  One process for all runs costs a fork and exec of the
shell per run, instead of an interpreter.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easytask.agent.spool import Record, Spool, encode_records, process_start
from easytask.loglines import MAX_LINE_BYTES

CHUNK = 65536
# the dispositions a command starts with reset to the default, as `subprocess` resets them
# (this process ignores SIGPIPE; Python ignores SIGXFSZ)
RESET_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name)
)


class _Splitter:
    """Raw-bytes twin of `easytask.loglines.LineSplitter`: same cut points, bytes kept as sent."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        end = self.buf.rfind(b"\n") + 1
        if end > 0 and len(self.buf) < MAX_LINE_BYTES:
            # the usual case, no line to cut: split the complete lines at once
            chunk = bytes(self.buf[:end])
            del self.buf[:end]
            lines = chunk.split(b"\n")
            lines.pop()
            return [line + b"\n" for line in lines]
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
    pid: int  # the command's (its process group's too)
    proc: subprocess.Popen[bytes] | None  # when it was started through `subprocess` (a user)
    out: Any  # the spool's output file, opened for appending
    cap: int
    poke: Callable[[str, str], None]  # tell the agent: ("p" | "x", spool name)
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
        nbytes = sum(map(len, items))
        if not self.cap or self.stored + nbytes <= self.cap:
            # all of them fit: encode them in one go
            first = self.seq + 1
            self.seq += len(items)
            self.stored += nbytes
            self.out.write(encode_records(first, stream, items))
            self.poke("p", self.spool.name)
            return
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
            self.poke("p", self.spool.name)

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

    def __init__(self, out_fd: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.pid = os.getpid()
        self.start_time = process_start(self.pid)
        self.draining: list[_Run] = []  # output closed, process not reaped yet
        self.out_fd = out_fd
        self.outbox = bytearray()  # answers and pokes not yet written to the agent
        self.pokes: dict[str, str] = {}  # spool name -> "p" or "x", sent once per loop turn
        self.agent_gone = False
        self.home = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # see `spawn`

    @property
    def busy(self) -> bool:
        return bool(self.draining) or any(
            isinstance(key.data, tuple) for key in self.sel.get_map().values()
        )

    def poke(self, kind: str, spool: str) -> None:
        if self.pokes.get(spool) != "x":
            self.pokes[spool] = kind

    def say(self, text: str) -> None:
        self.outbox += text.encode()

    def flush(self) -> None:
        """Write what the agent should hear; never block on it (pokes wait for the next turn)."""
        for spool, kind in self.pokes.items():
            self.outbox += f"{kind} {spool}\n".encode()
        self.pokes.clear()
        if self.agent_gone or not self.outbox:
            self.outbox.clear()
            return
        try:
            written = os.write(self.out_fd, self.outbox)
        except BlockingIOError:
            written = 0
        except OSError:  # the agent is gone: its successor reads the spools instead
            self.agent_gone = True
            self.outbox.clear()
            return
        del self.outbox[:written]

    def start(self, name: str, spec: dict[str, Any]) -> int:
        """Start the command of one spool; the command's process group id (0 if it failed)."""
        path = Path(name)
        spool = Spool(path.parent, path.name)
        # the command's whole environment, made by the agent (easytask.agent.runner.command_env):
        # nothing of this process's own environment is passed on
        env = {str(k): str(v) for k, v in (spec.get("env") or {}).items()}
        user = spec.get("user")  # run as this account (the agent's --run-as)
        ids: dict[str, Any] = {}
        if user:
            ids = {"user": user["uid"], "group": user["gid"], "extra_groups": user["groups"]}
        cwd = spec.get("cwd") or os.path.expanduser("~")
        if not os.path.isdir(cwd):
            cwd = "/"
        # the agent created the file (no O_CREAT: a spool nobody made is an error)
        out = open(os.open(spool.out_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC), "ab", 0)
        feed = str(spec.get("stdin") or "").encode()  # values a prelude of the command reads
        argv = [spec.get("shell") or "/bin/sh", "-c", spec["command"]]
        mine: list[int] = []  # this side's pipe ends (a failed start closes them)
        theirs: list[int] = []  # the command's ends, closed here once it has them
        try:
            out_r, out_w = os.pipe()
            mine.append(out_r)
            theirs.append(out_w)
            err_r, err_w = os.pipe()
            mine.append(err_r)
            theirs.append(err_w)
            in_r = in_w = -1
            if feed:
                in_r, in_w = os.pipe()
                mine.append(in_w)
                theirs.append(in_r)
            proc = None
            if ids:  # another account: only `subprocess` switches users for the child
                proc = subprocess.Popen(
                    argv,
                    stdin=in_r if feed else subprocess.DEVNULL,
                    stdout=out_w,
                    stderr=err_w,
                    start_new_session=True,
                    cwd=cwd,
                    env=env,
                    close_fds=False,  # every descriptor we open is non-inheritable already
                    **ids,
                )
                pid = proc.pid
            else:
                pid = self.spawn(argv, env, cwd, in_r, out_w, err_w)
        except OSError as exc:
            for fd in mine:
                os.close(fd)
            text = f"easytask agent: cannot start command: {exc}\n".encode()
            out.write(Record(1, "stderr", text).encode())
            spool.write_exit(
                {
                    "exit_code": 127,
                    "signal": None,
                    "lines": 1,
                    "bytes": 0,
                    "dropped_bytes": 0,
                    "dropped_lines": 0,
                },
                out,
            )
            out.close()
            self.poke("x", spool.name)
            return 0
        finally:
            for fd in theirs:
                os.close(fd)
        if feed:
            threading.Thread(target=_feed, args=(in_w, feed), daemon=True).start()
        out.write(Spool.proc_record(self.pid, self.start_time, pid))
        run = _Run(spool, pid, proc, out, int(spec.get("cap") or 0), self.poke)
        self.sel.register(out_r, selectors.EVENT_READ, (run, "stdout"))
        self.sel.register(err_r, selectors.EVENT_READ, (run, "stderr"))
        return pid

    def spawn(self, argv: list[str], env: dict[str, str], cwd: str, *fds: int) -> int:
        """Start a command as `subprocess.Popen` would with `start_new_session`, at about half
        its cost in this process (no Popen object, pipes as plain descriptors): `posix_spawn`,
        whose child shares this process's memory until it execs (as Popen's vfork).  `fds`:
        the command's stdin (-1: /dev/null), stdout and stderr.  posix_spawn cannot change the
        child's directory: this process goes there for the spawn and back (its spool paths may
        be relative to its own)."""
        stdin, stdout, stderr = fds
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDWR, 0)
            if stdin < 0
            else (os.POSIX_SPAWN_DUP2, stdin, 0),
            (os.POSIX_SPAWN_DUP2, stdout, 1),
            (os.POSIX_SPAWN_DUP2, stderr, 2),
        ]
        os.chdir(cwd)
        try:
            return os.posix_spawn(
                argv[0],
                argv,
                env,
                file_actions=actions,
                setsid=True,
                setsigdef=RESET_SIGNALS,  # what Popen's restore_signals puts back
            )
        finally:
            os.fchdir(self.home)

    def readable(self, run: _Run, stream: str, fd: int) -> None:
        data = os.read(fd, CHUNK)
        if not data:
            self.sel.unregister(fd)
            os.close(fd)
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
            rc = run.proc.poll() if run.proc is not None else _poll(run.pid)
            if rc is None:
                still.append(run)
                continue
            run.spool.write_exit(run.exit_record(rc), run.out)
            run.out.close()
            self.poke("x", run.spool.name)
        self.draining = still

    def request(self, raw: bytes) -> None:
        """Start one run named by a request line and answer it."""
        try:
            req = json.loads(raw)
            pgid = self.start(str(req["spool"]), req["spec"])
        except Exception as exc:  # one bad request must not stop the others
            self.say("error " + str(exc).replace("\n", " ") + "\n")
        else:
            self.say(f"ok {pgid}\n")


def _poll(pid: int) -> int | None:
    """A started command's exit code as Popen.returncode says it (-N: killed by signal N), or
    None while it runs."""
    done, status = os.waitpid(pid, os.WNOHANG)
    return os.waitstatus_to_exitcode(status) if done else None


def _feed(fd: int, data: bytes) -> None:
    """Write a command's stdin and close it (a thread: the command reads when it is ready)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # it ended, or closed its stdin, before reading: its own exit code says so
    finally:
        os.close(fd)


def serve(stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Start runs requested on stdin until it closes, then see the last of them to their end."""
    # its own session: no terminal signals reach it (commands get the default dispositions)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    os.set_blocking(stdout_fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    sup = Supervisor(stdout_fd)
    sup.sel.register(wake_r, selectors.EVENT_READ, "wake")
    sup.sel.register(stdin_fd, selectors.EVENT_READ, "in")
    taking = True
    buf = b""
    while taking or sup.busy:
        # a command that closed its output but has not exited yet is checked every second;
        # what the agent could not take yet is retried soon
        timeout = 0.05 if sup.outbox else 1.0 if sup.draining else None
        for key, _ in sup.sel.select(timeout=timeout):
            if key.data == "wake":
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            elif key.data == "in":
                data = os.read(stdin_fd, CHUNK)
                if not data:
                    sup.sel.unregister(stdin_fd)
                    sup.agent_gone = True
                    taking = False
                    continue
                buf += data
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    sup.request(raw)
            else:
                run, stream = key.data
                try:
                    sup.readable(run, stream, key.fd)
                except OSError as exc:
                    print(f"easytask supervisor: {run.spool.key}: {exc}", file=sys.stderr)
        sup.reap()
        sup.flush()
    return 0


if __name__ == "__main__":
    sys.exit(serve())
