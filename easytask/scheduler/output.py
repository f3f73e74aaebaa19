"""A run's output on its way in: split into lines, numbered, published live and queued for storage.

Past the stored-output limit a run keeps its head and its tail: lines after the head go through a
bounded ring; whatever falls out of the ring is counted, and at the end one system line says how
many lines and bytes were cut before the tail is stored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from itertools import groupby
from operator import itemgetter

from easytask.loglines import STDERR, STDOUT, SYSTEM, LineSplitter, detect_levels
from easytask.masking import Masker
from easytask.scheduler import events
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.store.lines import LogRow

DEFAULT_LIMIT = 256 << 20  # stored bytes of output per run (head + tail)


class RunOutput:
    """Numbers lines 1..n in arrival order; every line goes to the hub and the writer once."""

    def __init__(
        self,
        run_id: int,
        job_id: int,
        host: str,
        hub: LiveHub,
        writer: LogWriter,
        first_seq: int = 1,
        limit: int | None = DEFAULT_LIMIT,
        stored: int = 0,
        masks: Iterable[str] = (),
    ) -> None:
        self.run_id = run_id
        self.job_id = job_id
        self.host = host
        self.hub = hub
        self.writer = writer
        self.first_seq = first_seq
        self.seq = first_seq - 1
        self.bytes = 0  # bytes received in this process
        self.lines = 0  # output lines numbered (stored or held for the tail)
        self.agent_lines = 0  # output lines received: what an agent has sent so far
        self.limit = limit
        self.tail_limit = min(limit // 4, 16 << 20) if limit else 0
        self.head_limit = (limit - self.tail_limit) if limit else 0
        self.stored = stored  # output bytes stored so far (head)
        self._tail: deque[tuple[str, str, int]] = deque()
        self._tail_bytes = 0
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self._cut_announced = False
        self._splitters = {STDOUT: LineSplitter(STDOUT), STDERR: LineSplitter(STDERR)}
        self._topics = (f"run:{run_id}", f"job:{job_id}")
        self._mask = Masker(masks)  # secrets never reach the hub, the store or an export

    def mask(self, text: str) -> str:
        """A text about this run (a reason that may quote its command) with its secrets masked."""
        return self._mask(text)

    @property
    def truncated(self) -> bool:
        """True when lines were cut between head and tail."""
        return self.dropped_lines > 0

    def data(self, stream: str, data: bytes) -> None:
        """Take a chunk of one stream."""
        self.bytes += len(data)
        texts, sizes = self._splitters[stream].feed(data)
        if texts:
            self._output(stream, texts, sizes)

    def reset_partial(self) -> None:
        """Forget partial lines (a re-attached agent resends from a line boundary)."""
        self._splitters = {STDOUT: LineSplitter(STDOUT), STDERR: LineSplitter(STDERR)}

    def system(self, text: str, level: str = "INFO") -> None:
        """Add a scheduler line (timeouts, kills, lost links) to the run's log."""
        self._emit(SYSTEM, [text], level)

    def close(self) -> None:
        """Flush partial last lines of both streams, then the cut notice and the tail."""
        for stream, splitter in self._splitters.items():
            texts, sizes = splitter.close()
            if texts:
                self._output(stream, texts, sizes)
        if self.dropped_lines or self._tail:
            if self.dropped_lines:
                self.system(
                    f"output cut: {self.dropped_lines} lines ({self.dropped_bytes} bytes) dropped "
                    f"between the first {self.head_limit} and the last {self.tail_limit} bytes "
                    f"(stored-output limit {self.limit} bytes)",
                    "WARN",
                )
            held = list(self._tail)
            self._tail.clear()
            self._tail_bytes = 0
            for stream, group in groupby(held, key=itemgetter(0)):
                self._emit(stream, [text for _, text, _ in group])

    def _output(self, stream: str, texts: list[str], sizes: list[int]) -> None:
        self.agent_lines += len(texts)
        nbytes = sum(sizes)
        if not self.limit or (not self._tail and self.stored + nbytes <= self.head_limit):
            self.stored += nbytes
            self._emit(stream, texts)
            return
        keep: list[str] = []
        for text, size in zip(texts, sizes, strict=True):
            if not self._tail and self.stored + size <= self.head_limit:
                self.stored += size
                keep.append(text)
                continue
            # past the head: hold the line for the tail, dropping the oldest held ones
            self._tail.append((stream, text, size))
            self._tail_bytes += size
            while self._tail_bytes > self.tail_limit and self._tail:
                _, _, gone = self._tail.popleft()
                self._tail_bytes -= gone
                self.dropped_lines += 1
                self.dropped_bytes += gone
        if keep:
            self._emit(stream, keep)
        if self._tail and not self._cut_announced:
            self._cut_announced = True
            self.hub.publish(
                events.run_notice(
                    self.run_id,
                    self.host,
                    "output past the stored-output limit: keeping the tail only",
                ),
                *self._topics,
                f"jobstate:{self.job_id}",
            )

    def _emit(self, stream: str, texts: list[str], level: str | None = None) -> None:
        """Number lines of one stream, queue them for storage and publish them to viewers."""
        now = time.time()
        if self._mask:
            texts = [self._mask(text) for text in texts]
        levels = [level] * len(texts) if level else detect_levels(texts, stream)
        first = self.seq + 1
        self.seq += len(texts)
        run_id = self.run_id
        rows: list[LogRow] = [
            (run_id, seq, now, stream, lvl, text)
            for seq, lvl, text in zip(range(first, self.seq + 1), levels, texts, strict=True)
        ]
        if stream != SYSTEM:
            self.lines += len(texts)
        # Nobody follows most runs live: then build no per-line events at all.
        if self.hub.watched(*self._topics):
            for row in rows:
                event = events.line(run_id, self.host, row[1], now, stream, row[4], row[5])
                self.hub.publish(event, *self._topics)
        self.writer.add(rows, sum(map(len, texts)))
