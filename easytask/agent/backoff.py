"""How long an agent waits before it dials its servers again: exponential backoff with jitter."""

from __future__ import annotations

import random

# seconds: the longest wait between tries while every server refuses the connection (none is
# listening: a try costs a server nothing), so a fleet is back soon after its server restarts
REFUSED_BACKOFF_MAX = 5.0


class NoServerListening(OSError):
    """Every server refused the connection: none of them is listening now."""


def no_server(failures: list[tuple[str, Exception]]) -> OSError:
    """The error of a try that reached no server (`failures`: each server's address and
    error): `NoServerListening` when every one refused the connection."""
    text = "; ".join(f"{where}: {str(exc) or type(exc).__name__}" for where, exc in failures)
    if failures and all(isinstance(exc, ConnectionRefusedError) for _, exc in failures):
        return NoServerListening(text)
    return OSError(text)


class Backoff:
    """The wait before each try: doubling from `least` up to `most` (up to
    `REFUSED_BACKOFF_MAX` after a try no server listened to), times 0.5 to 1.5."""

    def __init__(self, least: float, most: float) -> None:
        self.least = least
        self.most = most
        self.current = least

    def reset(self) -> None:
        """After a link that lasted: the next wait is the shortest again."""
        self.current = self.least

    def next_delay(self, refused: bool) -> float:
        """The wait before the next try; `refused`: the last one found no server listening."""
        longest = min(self.most, REFUSED_BACKOFF_MAX) if refused else self.most
        self.current = min(self.current, longest)
        delay = self.current * (0.5 + random.random())
        self.current = min(self.current * 2, longest)
        return delay
