"""In-process publish/subscribe of live events; a slow viewer is dropped, not waited for."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from typing import Any

Event = dict[str, Any]


class Subscription:
    """One viewer's bounded queue of events on some topics."""

    def __init__(self, hub: LiveHub, topics: tuple[str, ...], maxsize: int) -> None:
        self.hub = hub
        self.topics = topics
        self.maxsize = maxsize
        self.overflowed = False
        self._items: deque[Event] = deque()
        self._waiter: asyncio.Future[None] | None = None

    @property
    def pending(self) -> int:
        """Events queued and not taken yet."""
        return len(self._items)

    def push(self, event: Event) -> None:
        """Queue one event (see `push_many`)."""
        self.push_many([event])

    def push_many(self, events: list[Event]) -> None:
        """Queue events in order and wake the viewer; past `maxsize` mark it as overflowed."""
        if self.overflowed:
            return
        if len(self._items) + len(events) > self.maxsize:
            # The viewer fell behind: it must resume from the store by sequence number.
            self.overflowed = True
        else:
            self._items.extend(events)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None after `timeout` seconds of silence (or on an overflow)."""
        if not self._items and not self.overflowed:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        return self._items.popleft() if self._items else None

    def take(self, limit: int) -> list[Event]:
        """Up to `limit` queued events, without waiting."""
        items = self._items
        if len(items) <= limit:
            out = list(items)
            items.clear()
            return out
        return [items.popleft() for _ in range(limit)]

    def get_nowait(self) -> Event | None:
        """The next event if one is waiting, else None."""
        return self._items.popleft() if self._items else None

    def reset(self) -> None:
        """Clear the queue and the overflow after the viewer caught up from the store."""
        self._items.clear()
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
    A job's end (`"t": "job"`) does not wait for the next round: it goes on the next turn.
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

    def watched(self, *topics: str) -> bool:
        """True when any of the topics has a subscriber (publishing to none of them does nothing)."""
        return any(topic in self._subs for topic in topics)

    def publish(self, event: Event, *topics: str) -> None:
        """Deliver an event to every subscriber of any of the topics (once each), in this round."""
        if not self.watched(*topics):
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a script or a test): deliver now
            self._deliver([event], topics)
            return
        self._pending.append((event, topics))
        if event.get("t") == "job":
            # A job's end is what a waiting client waits for: this round goes at once (with
            # everything before it, in order).
            if isinstance(self._round, asyncio.TimerHandle):
                self._round.cancel()
                self._round = None
            if self._round is None:
                self._round = loop.call_soon(self.flush)
            return
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
        # Consecutive events on the same topics (a run's lines) go to each subscriber together.
        group: list[Event] = []
        topics: tuple[str, ...] = ()
        for event, event_topics in pending:
            if event_topics != topics and group:
                self._deliver(group, topics)
                group = []
            group.append(event)
            topics = event_topics
        if group:
            self._deliver(group, topics)

    def _deliver(self, events: list[Event], topics: tuple[str, ...]) -> None:
        if len(topics) == 1:
            for sub in tuple(self._subs.get(topics[0], ())):
                sub.push_many(events)
            return
        seen: set[int] = set()
        for topic in topics:
            for sub in tuple(self._subs.get(topic, ())):
                if id(sub) not in seen:
                    seen.add(id(sub))
                    sub.push_many(events)

    @property
    def viewers(self) -> int:
        """Number of live subscriptions."""
        return len({id(s) for subs in self._subs.values() for s in subs})
