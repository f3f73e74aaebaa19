"""A run's output on its way in: numbered in order, levelled, masked, head and tail kept."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.output import RunOutput
from easytask.store.db import Store, sqlite_url
from easytask.store.models import Job, Run


def _stored(
    tmp_path: Path, chunks: list[tuple[str, bytes]], **options: Any
) -> tuple[list[tuple[int, str, str, str]], RunOutput]:
    """Feed chunks through a RunOutput into a real store; the stored (seq, stream, level, text)."""
    store = Store(sqlite_url(tmp_path / "easytask.db"))
    store.create_schema()
    job, (run,) = store.create_job(Job(command="x"), [Run(host="h", command="x")])
    assert job.id is not None and run.id is not None

    async def main() -> RunOutput:
        writer = LogWriter(store)
        writer.start()
        out = RunOutput(run.id, job.id, "h", LiveHub(), writer, **options)
        for stream, data in chunks:
            out.data(stream, data)
        out.close()
        await writer.close()
        return out

    try:
        out = asyncio.run(main())
        lines = [(ln.seq, ln.stream, ln.level, ln.text) for ln in store.read_lines(run.id)]
    finally:
        store.close()
    return lines, out


def test_lines_are_numbered_in_arrival_order_with_levels_and_masks(tmp_path: Path) -> None:
    """Chunks of both streams become lines 1..n in order, each levelled and masked on its own."""
    lines, out = _stored(
        tmp_path,
        [
            ("stdout", b"plain\nERROR: disk full\r\npart"),
            ("stderr", b"warning? no: plain stderr\n[debug] x\n"),
            ("stdout", b"ial token=s3cret\ncaf\xc3\xa9 \xff\n"),
        ],
        masks=["s3cret"],
    )
    assert lines == [
        (1, "stdout", "INFO", "plain"),
        (2, "stdout", "ERROR", "ERROR: disk full"),
        (3, "stderr", "WARN", "warning? no: plain stderr"),
        (4, "stderr", "DEBUG", "[debug] x"),
        (5, "stdout", "INFO", "partial token=****"),
        (6, "stdout", "INFO", "caf\u00e9 \\xff"),
    ]
    assert out.lines == 6 and out.seq == 6


def test_a_line_past_the_head_sends_every_later_line_to_the_tail(tmp_path: Path) -> None:
    """Once a line does not fit the stored head, shorter lines after it follow it: order holds."""
    # limit 400: a head of 300 bytes and a tail of 100
    lines, out = _stored(
        tmp_path, [("stdout", b"a" * 250 + b"\n" + b"b" * 60 + b"\nc\n")], limit=400
    )
    assert [(seq, text[:1]) for seq, _, _, text in lines] == [(1, "a"), (2, "b"), (3, "c")]
    assert not out.truncated
