"""Turning a byte stream into numbered, levelled log lines (pure code)."""

from __future__ import annotations

import re
from dataclasses import dataclass

STDOUT = "stdout"
STDERR = "stderr"
SYSTEM = "system"

DEBUG, INFO, WARN, ERROR = "DEBUG", "INFO", "WARN", "ERROR"
LEVELS = (DEBUG, INFO, WARN, ERROR)

# A line longer than this is stored as several lines; the cut is recorded on the run.
MAX_LINE_BYTES = 1 << 20

_LEVEL_RE = re.compile(
    r"(?:^|[\s\[(|:\"'=])(?P<word>FATAL|CRITICAL|CRIT|ERROR|ERR|WARNING|WARN|INFO|NOTICE|DEBUG|TRACE)"
    r"(?=$|[\s\]):|,\"'])",
    re.IGNORECASE,
)
_LEVEL_MAP = {
    "fatal": ERROR,
    "critical": ERROR,
    "crit": ERROR,
    "error": ERROR,
    "err": ERROR,
    "warning": WARN,
    "warn": WARN,
    "info": INFO,
    "notice": INFO,
    "debug": DEBUG,
    "trace": DEBUG,
}


def detect_level(text: str, stream: str) -> str:
    """The level a line states in its first 200 characters, else stdout -> INFO, stderr -> WARN."""
    head = text[:200]
    match = _LEVEL_RE.search(head)
    if match:
        word = match.group("word")
        # Lower-case words count only in key=value form (level=info) or after a bracket.
        if word.isupper() or word.istitle() or head[max(match.start("word") - 1, 0)] in "=[":
            return _LEVEL_MAP[word.lower()]
    return WARN if stream == STDERR else INFO


def decode(data: bytes) -> str:
    """Decode output as UTF-8; bytes that are not UTF-8 are kept visibly as \\xNN escapes."""
    return data.decode("utf-8", errors="backslashreplace")


@dataclass(slots=True)
class Line:
    """One line of output of one stream, without its newline."""

    stream: str
    text: str
    nbytes: int


class LineSplitter:
    """Splits one stream's chunks into lines; a partial line waits for its end."""

    __slots__ = ("stream", "_buf", "max_line")

    def __init__(self, stream: str, max_line: int = MAX_LINE_BYTES) -> None:
        self.stream = stream
        self._buf = bytearray()
        self.max_line = max_line

    def feed(self, data: bytes) -> list[Line]:
        """Add a chunk and return the lines it completed."""
        out: list[Line] = []
        buf = self._buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._emit(out, bytes(buf[start:nl]), nl - start + 1)
            start = nl + 1
        if start:
            del buf[:start]
        while len(buf) >= self.max_line:
            chunk = bytes(buf[: self.max_line])
            del buf[: self.max_line]
            out.append(Line(self.stream, decode(chunk), len(chunk)))
        return out

    def close(self) -> list[Line]:
        """Return the last line if the stream did not end with a newline."""
        if not self._buf:
            return []
        data = bytes(self._buf)
        self._buf.clear()
        out: list[Line] = []
        self._emit(out, data, len(data))
        return out

    def _emit(self, out: list[Line], raw: bytes, nbytes: int) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        while len(raw) > self.max_line:
            out.append(Line(self.stream, decode(raw[: self.max_line]), self.max_line))
            raw = raw[self.max_line :]
            nbytes -= self.max_line
        out.append(Line(self.stream, decode(raw), nbytes))
