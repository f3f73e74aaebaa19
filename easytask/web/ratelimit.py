"""Failed sign-ins, counted per user name and per client address, in a sliding window."""

from __future__ import annotations

import math
import time
from collections import deque

MAX_FAILURES = 5
WINDOW = 60.0
MAX_KEYS = 100_000


class LoginLimiter:
    """After `limit` failures within `window` seconds a key is refused until the oldest expires.

    Keys are `user:NAME` and `addr:ADDRESS`; a sign-in is refused when either key is over the
    limit, so guessing many passwords for one user or many users from one address both stop.
    """

    def __init__(self, limit: int = MAX_FAILURES, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._failures.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failures[key]
            return None
        return times

    def retry_after(self, user: str, address: str) -> int:
        """Seconds to wait before this user may try again from this address (0: go ahead)."""
        now = time.monotonic()
        wait = 0.0
        for key in (f"user:{user.lower()}", f"addr:{address}"):
            times = self._recent(key, now)
            if times is not None and len(times) >= self.limit:
                wait = max(wait, times[-self.limit] + self.window - now)
        return math.ceil(wait) if wait > 0 else 0

    def failed(self, user: str, address: str) -> None:
        """Count one failed sign-in against the user name and the address."""
        now = time.monotonic()
        if len(self._failures) > MAX_KEYS:
            for key in list(self._failures):
                self._recent(key, now)
            if len(self._failures) > MAX_KEYS:
                self._failures.clear()
        for key in (f"user:{user.lower()}", f"addr:{address}"):
            self._failures.setdefault(key, deque(maxlen=self.limit * 4)).append(now)

    def succeeded(self, user: str) -> None:
        """A correct password clears the user's count (the address keeps its own)."""
        self._failures.pop(f"user:{user.lower()}", None)
