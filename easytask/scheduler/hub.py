"""In-process publish/subscribe of live events; a slow viewer is dropped, not waited for."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

Event = dict[str, Any]


class Subscription:
    """One viewer's bounded queue of events on some topics."""

    def __init__(self, hub: LiveHub, topics: tuple[str, ...], maxsize: int) -> None:
        self.hub = hub
        self.topics = topics
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.overflowed = False

    def push(self, event: Event) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            # The viewer fell behind: it must resume from the store by sequence number.
            self.overflowed = True

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds of silence."""
        try:
            async with asyncio.timeout(timeout):
                return await self.queue.get()
        except TimeoutError:
            return None

    def reset(self) -> None:
        """Clear the overflow after the viewer caught up from the store."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.overflowed = False

    def close(self) -> None:
        """Stop receiving events."""
        self.hub._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LiveHub:
    """Topics such as `job:12` and `run:34`, each with any number of subscribers.

    Events are delivered in the order they were published, in rounds at most `interval`
    seconds apart: the first event after a quiet spell goes out on the next turn of the event
    loop, and a busy run's lines are grouped, so each viewer wakes once per round, not once per
    line (50 viewers of a run printing 1,000 lines/s: 10,000 wake-ups a second, not 50,000).
    """

    def __init__(self, maxsize: int = 20000, interval: float = 0.005) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self.maxsize = maxsize
        self.interval = interval
        self._pending: list[tuple[Event, tuple[str, ...]]] = []
        self._round: asyncio.Handle | None = None
        self._last_round = -1e9

    def subscribe(self, *topics: str) -> Subscription:
        """Start receiving events published on these topics."""
        sub = Subscription(self, topics, self.maxsize)
        for topic in topics:
            self._subs[topic].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        for topic in sub.topics:
            subs = self._subs.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[topic]

    def publish(self, event: Event, *topics: str) -> None:
        """Deliver an event to every subscriber of any of the topics (once each), in this round."""
        if not any(topic in self._subs for topic in topics):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script or a test): deliver now
            self._deliver(event, topics)
            return
        self._pending.append((event, topics))
        if self._round is None:
            wait = self._last_round + self.interval - loop.time()
            if wait > 0:
                self._round = loop.call_later(wait, self.flush)
            else:
                self._round = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Deliver every pending event now, in order."""
        if self._round is not None:
            self._round.cancel()
            self._round = None
        try:
            self._last_round = asyncio.get_running_loop().time()
        except RuntimeError:
            pass
        pending, self._pending = self._pending, []
        for event, topics in pending:
            self._deliver(event, topics)

    def _deliver(self, event: Event, topics: tuple[str, ...]) -> None:
        if len(topics) == 1:
            for sub in self._subs.get(topics[0], ()):
                sub.push(event)
            return
        seen: set[int] = set()
        for topic in topics:
            for sub in self._subs.get(topic, ()):
                if id(sub) not in seen:
                    seen.add(id(sub))
                    sub.push(event)

    @property
    def viewers(self) -> int:
        """Number of live subscriptions."""
        return len({id(s) for subs in self._subs.values() for s in subs})
