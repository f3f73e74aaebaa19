"""Line splitting, decoding and level detection."""

from __future__ import annotations

import pytest

from easytask.loglines import DEBUG, ERROR, INFO, WARN, LineSplitter, detect_level, detect_levels


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
    assert s.feed(b"one\ntw") == (["one"], [4])
    assert s.feed(b"o\nthr") == (["two"], [4])
    assert s.close() == (["thr"], [3])
    assert s.close() == ([], [])


@pytest.mark.parametrize(
    "data",
    [b"a\r\nbb\n\nccc", "caf\u00e9 \u20ac\r\n\u00fcber\n".encode(), b"bad \xe2\x82\r\n\xff\n"],
)
def test_splitter_counts_bytes_exactly(data: bytes) -> None:
    """Each line's size is its bytes as received (newline and carriage return included)."""
    s = LineSplitter("stdout")
    texts, sizes = s.feed(data)
    tail, tail_sizes = s.close()
    pieces = data.split(b"\n")
    assert sizes + tail_sizes == [len(p) + 1 for p in pieces[:-1]] + (
        [len(pieces[-1])] * bool(tail)
    )
    assert sum(sizes + tail_sizes) == len(data)
    assert len(texts + tail) == len(sizes + tail_sizes)


def test_splitter_decodes_a_chunk_as_line_by_line() -> None:
    """Decoding many lines at once gives the texts of decoding each line alone."""
    raw = [
        b"plain",
        b"caf\xc3\xa9",
        b"cut \xe2\x82",
        b"bad \xff\xfe",
        b"cr\r",
        b"\xe2\x82\xac\r",
        b"",
    ]
    s = LineSplitter("stdout")
    texts, _ = s.feed(b"\n".join(raw) + b"\n")
    assert texts == [r.removesuffix(b"\r").decode("utf-8", "backslashreplace") for r in raw]
    assert texts[2] == "cut \\xe2\\x82" and texts[5] == "\u20ac"


def test_splitter_keeps_invalid_utf8_visible() -> None:
    """Bytes that are not UTF-8 become \\xNN escapes instead of being dropped."""
    s = LineSplitter("stdout")
    assert s.feed(b"ok \xff\xfe end\n")[0] == ["ok \\xff\\xfe end"]


def test_splitter_cuts_very_long_lines() -> None:
    """A line longer than the limit is stored as several lines, nothing is lost."""
    s = LineSplitter("stdout", max_line=10)
    texts, sizes = s.feed(b"x" * 25)
    more, more_sizes = s.feed(b"\n")
    assert [len(t) for t in texts + more] == [10, 10, 5]
    assert sizes + more_sizes == [10, 10, 6]


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
@pytest.mark.parametrize(
    "texts",
    [
        ["plain", "more plain", ""],
        ["plain", "ERROR: disk full", "level=debug x", "[warn] y", "errors=0"],
        [" " * 195 + "ERRORS", "x" * 300 + " ERROR"],  # a word cut at the 200th character
        ["a\tWARNING", "Traceback: an error happened"],
        [],
    ],
)
def test_detect_levels_is_detect_level_of_each_line(texts: list[str], stream: str) -> None:
    """The batch form gives every line the level `detect_level` gives it alone."""
    assert detect_levels(texts, stream) == [detect_level(t, stream) for t in texts]
