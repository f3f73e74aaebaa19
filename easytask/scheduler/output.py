"""A run's output on its way in: split into lines, numbered, published live and queued for storage."""

from __future__ import annotations

import time
from typing import Any

from easytask.lines import STDERR, STDOUT, SYSTEM, LineSplitter, detect_level
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.store.db import LogRow


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
    ) -> None:
        self.run_id = run_id
        self.job_id = job_id
        self.host = host
        self.hub = hub
        self.writer = writer
        self.first_seq = first_seq
        self.seq = first_seq - 1
        self.bytes = 0
        self.lines = 0
        self._splitters = {STDOUT: LineSplitter(STDOUT), STDERR: LineSplitter(STDERR)}
        self._topics = (f"run:{run_id}", f"job:{job_id}")

    def data(self, stream: str, data: bytes) -> None:
        """Take a chunk of one stream."""
        self.bytes += len(data)
        lines = self._splitters[stream].feed(data)
        if lines:
            self._emit([(ln.stream, ln.text) for ln in lines])

    def system(self, text: str, level: str = "INFO") -> None:
        """Add a scheduler line (timeouts, kills, lost links) to the run's log."""
        self._emit([(SYSTEM, text)], level)

    def close(self) -> None:
        """Flush partial last lines of both streams."""
        for splitter in self._splitters.values():
            tail = splitter.close()
            if tail:
                self._emit([(ln.stream, ln.text) for ln in tail])

    def _emit(self, items: list[tuple[str, str]], level: str | None = None) -> None:
        now = time.time()
        rows: list[LogRow] = []
        for stream, text in items:
            self.seq += 1
            lvl = level or detect_level(text, stream)
            rows.append((self.run_id, self.seq, now, stream, lvl, text))
            if stream != SYSTEM:
                self.lines += 1
            event: dict[str, Any] = {
                "t": "line",
                "run": self.run_id,
                "host": self.host,
                "seq": self.seq,
                "ts": now,
                "stream": stream,
                "level": lvl,
                "text": text,
            }
            self.hub.publish(event, *self._topics)
        self.writer.add(rows)
