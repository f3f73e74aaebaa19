"""Line splitting, decoding and level detection."""

from __future__ import annotations

import pytest

from easytask.lines import DEBUG, ERROR, INFO, WARN, LineSplitter, detect_level


@pytest.mark.parametrize(
    ("text", "stream", "level"),
    [
        ("plain output", "stdout", INFO),
        ("plain output", "stderr", WARN),
        ("ERROR: disk full", "stdout", ERROR),
        ("2024-01-01 12:00:00 WARNING low memory", "stdout", WARN),
        ("[warn] deprecated flag", "stdout", WARN),
        ("level=debug msg=hello", "stdout", DEBUG),
        ("level=error msg=boom", "stderr", ERROR),
        ("INFO starting", "stderr", INFO),
        ("Traceback: an error happened", "stdout", INFO),  # lower-case prose is not a level word
        ("FATAL: cannot continue", "stdout", ERROR),
        ("[DEBUG] value=3", "stdout", DEBUG),
        ("errors=0 warnings=0", "stdout", INFO),
    ],
)
def test_detect_level(text: str, stream: str, level: str) -> None:
    """A level word in the line wins; else stdout is INFO and stderr WARN."""
    assert detect_level(text, stream) == level


def test_splitter_joins_chunks_and_keeps_partial_lines() -> None:
    """Lines split across chunks come out whole; the last partial line comes out on close."""
    s = LineSplitter("stdout")
    assert [ln.text for ln in s.feed(b"one\ntw")] == ["one"]
    assert [ln.text for ln in s.feed(b"o\nthr")] == ["two"]
    assert [ln.text for ln in s.close()] == ["thr"]
    assert s.close() == []


def test_splitter_counts_bytes_exactly() -> None:
    """Byte counts of the lines add up to the bytes fed."""
    s = LineSplitter("stdout")
    data = b"a\r\nbb\n\nccc"
    lines = s.feed(data) + s.close()
    assert [ln.text for ln in lines] == ["a", "bb", "", "ccc"]
    assert sum(ln.nbytes for ln in lines) == len(data)


def test_splitter_keeps_invalid_utf8_visible() -> None:
    """Bytes that are not UTF-8 become \\xNN escapes instead of being dropped."""
    s = LineSplitter("stdout")
    (line,) = s.feed(b"ok \xff\xfe end\n")
    assert line.text == "ok \\xff\\xfe end"


def test_splitter_cuts_very_long_lines() -> None:
    """A line longer than the limit is stored as several lines, nothing is lost."""
    s = LineSplitter("stdout", max_line=10)
    lines = s.feed(b"x" * 25) + s.feed(b"\n")
    assert [len(ln.text) for ln in lines] == [10, 10, 5]
