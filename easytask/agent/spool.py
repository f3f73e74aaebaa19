"""A run's spool in the agent's state dir: numbered output records and the exit status.

Two files per run in `STATE/spool/` (no directory per run: on some disks every create, mkdir
and rmdir costs a good part of a millisecond, and a fan-out pays them on every host):
- `<run-key>.out`   records: 8-byte seq, 1-byte kind, 4-byte length, raw bytes.  Kind 1 is a
                    stdout line, 2 a stderr line; the first record, kind 3 (seq 0), says who
                    runs the command: `SUPERVISOR_PID START PGID` (the supervisor, its start
                    time in clock ticks since boot to tell a reused pid apart, and the
                    command's process group).  The agent creates the file, the supervisor
                    appends to it.
- `<run-key>.exit`  written last (through a hidden temp file): exit code or signal, line and
                    byte counts, what the cap dropped.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">QBI")
STREAM_CODES = {"stdout": 1, "stderr": 2}
STREAM_NAMES = {1: "stdout", 2: "stderr"}
PROC_CODE = 3  # the first record: who runs the command (never an output line)
OUT_SUFFIX = ".out"
EXIT_SUFFIX = ".exit"
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
    """One run's spool: its output file and, once the command ended, its exit file."""

    def __init__(self, root: Path, key: str) -> None:
        if not valid_key(key):
            raise ValueError(f"bad run key {key!r}")
        self.root = root
        self.key = key
        self.out_path = root / (key + OUT_SUFFIX)
        self.exit_path = root / (key + EXIT_SUFFIX)

    @property
    def name(self) -> str:
        """The spool's name between the agent and the supervisor (a path, not a file)."""
        return str(self.root / self.key)

    def exists(self) -> bool:
        return self.out_path.exists()

    def create(self) -> None:
        """Make the empty output file (FileExistsError: this run was started before)."""
        os.close(os.open(self.out_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

    def exit_info(self) -> dict[str, Any] | None:
        """The exit record, once the supervisor wrote it."""
        try:
            return dict(json.loads(self.exit_path.read_bytes()))
        except (OSError, ValueError):
            return None

    def write_exit(self, info: dict[str, Any]) -> None:
        """Write the exit record atomically."""
        tmp = self.root / f".{self.key}{EXIT_SUFFIX}.{os.getpid()}"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.exit_path)

    def records(self, after_seq: int = 0) -> Iterator[Record]:
        """Stored records with seq > after_seq, in order."""
        reader = RecordReader()
        try:
            fh = self.out_path.open("rb")
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
            with self.out_path.open("rb") as fh:
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
        """Delete the spool (after the server acknowledged everything).

        The output file goes first: a spool is counted by its output file, so nobody counting
        meanwhile sees a run without its exit record.
        """
        self.out_path.unlink(missing_ok=True)
        self.exit_path.unlink(missing_ok=True)


def spool_keys(root: Path) -> tuple[list[str], set[str]]:
    """The run keys with a spool under `root`, and those of them whose command ended."""
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return [], set()
    present = set(names)
    keys = [n[: -len(OUT_SUFFIX)] for n in names if n.endswith(OUT_SUFFIX) and n[0] != "."]
    ended = {k for k in keys if k + EXIT_SUFFIX in present}
    return sorted(keys), ended


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
