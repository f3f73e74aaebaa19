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

    def get_nowait(self) -> Event | None:
        """The next event if one is waiting, else None."""
        try:
            return self.queue.get_nowait()
        except asyncio.QueueEmpty:
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
    """Topics such as `job:12` and `run:34`, each with any number of subscribers."""

    def __init__(self, maxsize: int = 20000) -> None:
        self._subs: dict[str, set[Subscription]] = defaultdict(set)
        self.maxsize = maxsize

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
        """Deliver an event to every subscriber of any of the topics (once each)."""
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
