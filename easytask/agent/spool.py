"""A run's spool in the agent's state dir: numbered output records and the exit status.

One file per run in `STATE/spool/`, `<run-key>.out` while the command runs and `<run-key>.done`
once it ended (no directory, no second file: on some disks every create, mkdir and rmdir costs a
good part of a millisecond, and a fan-out pays them on every host).  It holds records: 8-byte
seq, 1-byte kind, 4-byte length, that many bytes.
- kind 3, first (seq 0): who runs the command, `SUPERVISOR_PID START PGID` (the supervisor, its
  start time in clock ticks since boot to tell a reused pid apart, and the command's process
  group);
- kinds 1 and 2: a stdout or stderr line, raw bytes, numbered from 1;
- kind 4, last (seq 0): the exit record, JSON (exit code or signal, line and byte counts, what
  the cap dropped) followed by its own length as 4 bytes, so it is found from the file's end.
  The file is renamed to `.done` only after the exit record is written.
The agent creates the `.out` file, the supervisor appends to it and renames it; once the server
has stored the run, the agent empties the file and keeps it as `.spare` (for the next run to
take) or deletes it.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

HEADER = struct.Struct(">QBI")
STREAM_CODES = {"stdout": 1, "stderr": 2}
STREAM_NAMES = {1: "stdout", 2: "stderr"}
PROC_CODE = 3  # the first record: who runs the command (never an output line)
EXIT_CODE = 4  # the last record: how the command ended
OUT_SUFFIX = ".out"
DONE_SUFFIX = ".done"
SPARE = ".spare"  # an acknowledged run's file, kept to be the next run's
_TAIL = struct.Struct(">I")
KEY_CHARS = set("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-_.")


@dataclass(slots=True)
class Record:
    """One numbered line (raw bytes, with its newline if it had one)."""

    seq: int
    stream: str
    data: bytes

    def encode(self) -> bytes:
        return HEADER.pack(self.seq, STREAM_CODES[self.stream], len(self.data)) + self.data


def encode_records(first_seq: int, stream: str, lines: list[bytes]) -> bytes:
    """Records of consecutive lines of one stream, numbered from `first_seq`."""
    code = STREAM_CODES[stream]
    pack = HEADER.pack
    return b"".join(
        [pack(seq, code, len(data)) + data for seq, data in enumerate(lines, first_seq)]
    )


def valid_key(key: str) -> bool:
    """Run keys name files: keep them to a safe alphabet."""
    return bool(key) and len(key) <= 100 and set(key) <= KEY_CHARS and not key.startswith(".")


class RecordReader:
    """Reads records from a byte stream or file incrementally (partial records wait)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.last_seq = 0  # of the last output record `feed_runs` returned

    def feed(self, data: bytes) -> list[Record]:
        """Add bytes and return the records they completed."""
        data = self._take(data)
        out: list[Record] = []
        pos = 0
        size = len(data)
        head = HEADER.size
        unpack = HEADER.unpack_from
        while size - pos >= head:
            seq, code, length = unpack(data, pos)
            end = pos + head + length
            if end > size:
                break
            if code in STREAM_NAMES:
                out.append(Record(seq, STREAM_NAMES[code], data[pos + head : end]))
            pos = end
        self._keep(data, pos)
        return out

    def feed_runs(self, data: bytes, after_seq: int = 0) -> list[tuple[str, bytes]]:
        """Add bytes; the completed records with seq > after_seq as (stream, joined data) runs of
        consecutive records of one stream (what a reader sends on, without a per-line object)."""
        data = self._take(data)
        runs: list[tuple[str, bytes]] = []
        pieces: list[bytes] = []
        current = 0
        pos = 0
        size = len(data)
        head = HEADER.size
        unpack = HEADER.unpack_from
        while size - pos >= head:
            seq, code, length = unpack(data, pos)
            start = pos + head
            end = start + length
            if end > size:
                break
            pos = end
            if seq <= after_seq or code not in STREAM_NAMES:
                continue
            self.last_seq = seq
            if code != current:
                if pieces:
                    runs.append((STREAM_NAMES.get(current, "stdout"), b"".join(pieces)))
                    pieces = []
                current = code
            pieces.append(data[start:end])
        if pieces:
            runs.append((STREAM_NAMES.get(current, "stdout"), b"".join(pieces)))
        self._keep(data, pos)
        return runs

    def _take(self, data: bytes) -> bytes:
        """The bytes left over from the last call followed by `data`."""
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        elif not isinstance(data, bytes):
            data = bytes(data)
        return data

    def _keep(self, data: bytes, pos: int) -> None:
        """Hold a partial record for the next call."""
        if pos < len(data):
            self._buf += data[pos:]


class Spool:
    """One run's spool file: `.out` while its command runs, `.done` with the exit record."""

    def __init__(self, root: Path, key: str) -> None:
        if not valid_key(key):
            raise ValueError(f"bad run key {key!r}")
        self.root = root
        self.key = key
        # the paths as text too: a run uses them several times, and a system call takes text
        self.name = os.path.join(root, key)  # its name between the agent and the supervisor
        self._out = self.name + OUT_SUFFIX
        self._done = self.name + DONE_SUFFIX
        self._spare = os.path.join(root, SPARE)
        self.out_path = Path(self._out)
        self.done_path = Path(self._done)

    def exists(self) -> bool:
        return _exists(self._out) or _exists(self._done)

    def create(self) -> None:
        """Make the empty output file (FileExistsError: this run was started before).

        The spare file an acknowledged run left (emptied then) is renamed: creating a file costs up
        to a millisecond of CPU on some disks, renaming one a few microseconds.  Runs start one
        at a time in the agent's event loop, so the check and the rename are not raced.
        """
        if self.exists():
            raise FileExistsError(f"run {self.key} was started before")
        try:
            if os.stat(self._spare).st_size:  # `retire` emptied it: this is belt and braces
                _empty(self._spare)
            os.rename(self._spare, self._out)
            return
        except FileNotFoundError:
            pass
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        os.close(os.open(self._out, flags, 0o600))

    def retire(self) -> bool:
        """Delete an ended spool (its lines are stored); its file becomes the spare for the next
        run if there is none.  False if there was no ended spool."""
        try:
            if not _exists(self._spare):
                _empty(self._done)  # the run's output (secrets too) leaves the disk
                os.rename(self._done, self._spare)
            else:
                os.unlink(self._done)
        except FileNotFoundError:
            return False
        return True

    def open(self) -> BinaryIO:
        """The spool file for reading, wherever it is now (FileNotFoundError: no spool)."""
        try:
            return open(self._out, "rb")
        except FileNotFoundError:
            return open(self._done, "rb")  # renamed meanwhile: the command ended

    def exit_info(self) -> dict[str, Any] | None:
        """The exit record, once the command ended."""
        try:
            with open(self._done, "rb") as fh:
                return _exit_record(fh)
        except (OSError, ValueError):
            return None

    @staticmethod
    def exit_info_in(fh: BinaryIO) -> dict[str, Any] | None:
        """`exit_info` from the spool file open for reading (no open more; its position kept)."""
        pos = fh.tell()
        try:
            return _exit_record(fh)
        except (OSError, ValueError):
            return None
        finally:
            fh.seek(pos)

    def write_exit(self, info: dict[str, Any], out: BinaryIO | None = None) -> None:
        """Append the exit record (through `out`, the file opened for appending, if given) and
        mark the spool ended."""
        data = json.dumps(info).encode()
        data += _TAIL.pack(len(data))
        record = HEADER.pack(0, EXIT_CODE, len(data)) + data
        if out is None:
            try:
                fd = os.open(self._out, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
            except FileNotFoundError:
                return  # ended already
            try:
                os.write(fd, record)
            finally:
                os.close(fd)
        else:
            out.write(record)
        os.rename(self._out, self._done)

    def records(self, after_seq: int = 0) -> Iterator[Record]:
        """Stored records with seq > after_seq, in order."""
        reader = RecordReader()
        try:
            fh = self.open()
        except FileNotFoundError:
            return
        with fh:
            while True:
                chunk = fh.read(1 << 20)
                if not chunk:
                    return
                for rec in reader.feed(chunk):
                    if rec.seq > after_seq:
                        yield rec

    @staticmethod
    def proc_record(supervisor_pid: int, supervisor_start: int, pgid: int) -> bytes:
        """The first record of the output file: who supervises the run, the command's group."""
        data = f"{supervisor_pid} {supervisor_start} {pgid}".encode()
        return HEADER.pack(0, PROC_CODE, len(data)) + data

    def _proc(self) -> tuple[int, int, int] | None:
        try:
            with self.open() as fh:
                head = fh.read(HEADER.size + 64)
        except OSError:
            return None
        if len(head) < HEADER.size:
            return None
        _, code, length = HEADER.unpack_from(head)
        if code != PROC_CODE:
            return None
        try:
            pid, start, pgid = head[HEADER.size : HEADER.size + length].split()
            return int(pid), int(start), int(pgid)
        except ValueError:
            return None

    @property
    def pgid(self) -> int | None:
        """The command's process group, once the supervisor started it."""
        proc = self._proc()
        return proc[2] if proc else None

    def supervisor_alive(self) -> bool:
        """Whether the supervisor of this run still runs."""
        proc = self._proc()
        if proc is None:
            return False
        pid, start, _ = proc
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        now = process_start(pid)
        return not start or not now or now == start  # a reused pid has another start time

    def remove(self) -> None:
        """Delete the spool, whether it ended or not."""
        for path in (self._out, self._done):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _empty(path: str) -> None:
    """Truncate a file to nothing through a descriptor of its own, closed at once.

    Not `os.truncate(path, 0)`: ext4 (its default `auto_da_alloc`) takes a file truncated to
    nothing for one about to be rewritten, and has the next close of it write its new data out
    at once.  Without a descriptor of ours to close, that close was the supervisor's, after the
    run's records: a write to the disk started per run (a run's spool file, created, written,
    read and retired, measured at 194 µs of CPU and 3.5 ms against 48 µs and 0.2 ms).  Our
    own close right after the truncation has nothing to write.
    """
    os.close(os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC))


def _exists(path: str) -> bool:
    """os.path.exists, as a spool uses it (a file it cannot stat is one that is not there)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    return True


def _exit_record(fh: BinaryIO) -> dict[str, Any] | None:
    """The exit record at the end of an ended spool file."""
    size = fh.seek(0, os.SEEK_END)
    if size < HEADER.size + _TAIL.size:
        return None
    fh.seek(size - _TAIL.size)
    (length,) = _TAIL.unpack(fh.read(_TAIL.size))
    start = size - _TAIL.size - length - HEADER.size
    if start < 0:
        return None
    fh.seek(start)
    head = fh.read(HEADER.size)
    _, code, total = HEADER.unpack(head)
    if code != EXIT_CODE or total != length + _TAIL.size:
        return None
    return dict(json.loads(fh.read(length)))


def spool_keys(root: Path) -> tuple[list[str], set[str]]:
    """The run keys with a spool under `root`, and those of them whose command ended."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return [], set()
    running: list[str] = []
    ended: set[str] = set()
    for n in names:
        if n[0] == ".":
            continue
        if n.endswith(OUT_SUFFIX):
            running.append(n[: -len(OUT_SUFFIX)])
        elif n.endswith(DONE_SUFFIX):
            ended.add(n[: -len(DONE_SUFFIX)])
    # a spool renamed between the listing's reads may show up twice: it has ended
    return sorted(set(running) | ended), ended


def process_start(pid: int) -> int:
    """A process's start time from /proc (0 when unknown)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return 0
    # the command name may hold spaces and parentheses: fields follow the last ')'
    fields = stat[stat.rfind(b")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return 0
