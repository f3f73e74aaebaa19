"""Durations as users write them."""

from __future__ import annotations

import pytest

from easytask.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30", 30),
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("2d", 172800),
        ("500ms", 0.5),
        ("1.5", 1.5),
        (7, 7.0),
        ("1w", 604800),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """Numbers are seconds; units ms, s, m, h, d, w combine."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "-3", "1h 30m", "abc"])
def test_parse_duration_rejects(text: str) -> None:
    """Anything else is an error that quotes the text."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4242, "0.42s"), (12.34, "12.3s"), (245, "4m05s"), (7380, "2h03m"), (None, "-")],
)
def test_format_duration(seconds: float | None, text: str) -> None:
    """Short human durations."""
    assert format_duration(seconds) == text
