"""Durations and sizes as users write them: `30s`, `1h30m`, `500ms`; `512k`, `2G` (pure code)."""

from __future__ import annotations

import math
import re

MAX_DURATION = 100 * 365 * 86400.0  # seconds: longer is a mistake (and overflows dates)
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str | float | int) -> float:
    """Seconds in a duration (at most 100 years); raises ValueError with the text when it is
    not one."""
    seconds = _duration(text)
    shown = str(text) if len(str(text)) <= 40 else str(text)[:40] + "…"
    if math.isnan(seconds):
        raise ValueError(f"not a duration: {shown!r}")
    if seconds > MAX_DURATION:
        raise ValueError(f"duration too long: {shown!r} (at most 100 years)")
    return seconds


def _duration(text: str | float | int) -> float:
    if isinstance(text, int | float) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"duration must not be negative: {text}")
        return float(text)
    value = str(text).strip().lower()
    if not value:
        raise ValueError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError(f"duration must not be negative: {text!r}")
        return seconds
    pos = 0
    total = 0.0
    for match in _PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise ValueError(
            f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m, 2d or a number of seconds)"
        )
    return total


def format_duration(seconds: float | None) -> str:
    """A short human form: 0.42s, 12.3s, 4m05s, 2h03m."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.2f}s" if seconds < 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Bytes in a size: `1048576`, `512k`, `256M`, `2GiB`, `1.5G` (binary units)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"not a size: {text!r} (use e.g. 512k, 256M, 2G or a number of bytes)")
    unit = match.group(2).lower().rstrip("b").rstrip("i")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])
