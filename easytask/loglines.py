"""Turning a byte stream into numbered, levelled log lines (pure code)."""

from __future__ import annotations

import re

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


# Only the start of a line is searched for its level word.
LEVEL_SPAN = 200


def detect_level(text: str, stream: str) -> str:
    """The level a line states in its first 200 characters, else stdout -> INFO, stderr -> WARN."""
    head = text[:LEVEL_SPAN]
    match = _LEVEL_RE.search(head)
    if match:
        word = match.group("word")
        # Lower-case words count only in key=value form (level=info) or after a bracket.
        if word.isupper() or word.istitle() or head[max(match.start("word") - 1, 0)] in "=[":
            return _LEVEL_MAP[word.lower()]
    return WARN if stream == STDERR else INFO


def detect_levels(texts: list[str], stream: str) -> list[str]:
    """`detect_level` of each line, with one search over the whole batch when none states one."""
    if not texts:
        return []
    if max(map(len, texts)) > LEVEL_SPAN:
        joined = "\n".join([text[:LEVEL_SPAN] for text in texts])
    else:
        joined = "\n".join(texts)
    # Each line's own match is also a match in the joined heads (a newline counts as the space
    # before or after a word), so no match there means no line states a level.
    if _LEVEL_RE.search(joined) is None:
        return [WARN if stream == STDERR else INFO] * len(texts)
    return [detect_level(text, stream) for text in texts]


def decode(data: bytes) -> str:
    """Decode output as UTF-8; bytes that are not UTF-8 are kept visibly as \\xNN escapes."""
    return data.decode("utf-8", errors="backslashreplace")


class LineSplitter:
    """Splits one stream's chunks into lines; a partial line waits for its end.

    `feed` and `close` return the lines' texts (without the newline, or a carriage return before
    it) and, beside them, each line's size in bytes as received.
    """

    __slots__ = ("stream", "_buf", "max_line")

    def __init__(self, stream: str, max_line: int = MAX_LINE_BYTES) -> None:
        self.stream = stream
        self._buf = bytearray()
        self.max_line = max_line

    def feed(self, data: bytes) -> tuple[list[str], list[int]]:
        """Add a chunk and return the lines it completed."""
        buf = self._buf
        buf += data
        end = buf.rfind(b"\n") + 1
        if end > 0 and len(buf) < self.max_line:
            # The usual case, no line to cut: decode the complete lines at once. A newline byte
            # is never part of a multi-byte character nor of an invalid sequence, so this gives
            # exactly the texts of decoding line by line.
            chunk = bytes(buf[:end])
            del buf[:end]
            return self._split(chunk)
        texts: list[str] = []
        sizes: list[int] = []
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            self._cut(texts, sizes, bytes(buf[start:nl]), nl - start + 1)
            start = nl + 1
        if start:
            del buf[:start]
        while len(buf) >= self.max_line:
            piece = bytes(buf[: self.max_line])
            del buf[: self.max_line]
            texts.append(decode(piece))
            sizes.append(len(piece))
        return texts, sizes

    def close(self) -> tuple[list[str], list[int]]:
        """Return the last line if the stream did not end with a newline."""
        texts: list[str] = []
        sizes: list[int] = []
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            self._cut(texts, sizes, data, len(data))
        return texts, sizes

    @staticmethod
    def _split(chunk: bytes) -> tuple[list[str], list[int]]:
        """Texts and sizes of complete lines, none longer than the limit."""
        texts = decode(chunk).split("\n")
        texts.pop()  # after the last newline
        if chunk.isascii():
            sizes = [len(text) + 1 for text in texts]
        else:
            parts = chunk.split(b"\n")
            parts.pop()
            sizes = [len(part) + 1 for part in parts]
        if b"\r" in chunk:
            texts = [text[:-1] if text.endswith("\r") else text for text in texts]
        return texts, sizes

    def _cut(self, texts: list[str], sizes: list[int], raw: bytes, nbytes: int) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        while len(raw) > self.max_line:
            texts.append(decode(raw[: self.max_line]))
            sizes.append(self.max_line)
            raw = raw[self.max_line :]
            nbytes -= self.max_line
        texts.append(decode(raw))
        sizes.append(nbytes)
