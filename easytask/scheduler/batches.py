"""Many callers' asks to the database in one call: what is asked while a call is on its way goes
together in the next one (a fan-out's hundreds of runs, a fleet's admissions after a restart)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class Batched(Generic[K, V]):
    """Asks for many keys in one call: what is asked while a call is on its way goes together
    in the next one (a fan-out asks for hundreds of runs at once: one statement, not one each).
    `fetch` answers the keys it knows; the others get `missing`."""

    def __init__(self, fetch: Callable[[list[K]], Awaitable[dict[K, V]]], missing: V) -> None:
        self.fetch = fetch
        self.missing = missing
        self._asked: dict[K, list[asyncio.Future[V]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def get(self, key: K) -> V:
        """The answer for one key (with every other key asked meanwhile)."""
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(key, []).append(fut)
        if self._task is None:
            self._task = asyncio.create_task(self._answer(), name="cluster-batch")
        return await fut

    async def _answer(self) -> None:
        try:
            while self._asked:
                await asyncio.sleep(0)  # the other runs woken with this one ask too
                asked, self._asked = self._asked, {}
                waiting = [f for futs in asked.values() for f in futs if not f.done()]
                if not waiting:
                    continue
                try:
                    found = await self.fetch(list(asked))
                except BaseException as exc:
                    for fut in waiting:
                        if not fut.done():
                            if isinstance(exc, asyncio.CancelledError):
                                fut.cancel()
                            else:
                                fut.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for key, futs in asked.items():
                    for fut in futs:
                        if not fut.done():
                            fut.set_result(found.get(key, self.missing))
        finally:
            self._task = None
            for futs in self._asked.values():  # cancelled: nobody will answer these
                for fut in futs:
                    fut.cancel()
            self._asked = {}

    def cancel(self) -> None:
        """Stop answering (the server is stopping)."""
        if self._task is not None:
            self._task.cancel()


T = TypeVar("T")
R = TypeVar("R")


class Gathered(Generic[T, R]):
    """Hands many items to one call: the items handed in while a call is on its way go together
    in the next one (at most `most` at a time), each caller getting its own item's answer
    (`fetch` answers a list of items with a list of answers, in order). When a call of several
    items fails, each is tried again alone: one item's error is its own caller's only."""

    def __init__(self, fetch: Callable[[list[T]], Awaitable[list[R]]], most: int = 500) -> None:
        self.fetch = fetch
        self.most = most
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def put(self, item: T) -> R:
        """The answer for one item (given with the other items handed in meanwhile)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queued.append((item, fut))
        if self._task is None:
            self._task = asyncio.create_task(self._answer(), name="gathered")
        return await fut

    async def _answer(self) -> None:
        batch: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._queued:
                await asyncio.sleep(0)  # the other callers woken with this one hand theirs in
                batch, self._queued = self._queued[: self.most], self._queued[self.most :]
                try:
                    answers = await self.fetch([item for item, _ in batch])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if len(batch) == 1:
                        _settle(batch[0][1], exc=exc)
                        continue
                    for item, fut in batch:  # each alone: one item's error is its own
                        try:
                            _settle(fut, (await self.fetch([item]))[0])
                        except asyncio.CancelledError:
                            raise
                        except Exception as err:
                            _settle(fut, exc=err)
                    continue
                for (_, fut), answer in zip(batch, answers, strict=True):
                    _settle(fut, answer)
        finally:
            self._task = None
            for _, fut in batch + self._queued:  # cancelled: nobody will answer these
                fut.cancel()
            self._queued = []

    def cancel(self) -> None:
        """Stop answering (the server is stopping)."""
        if self._task is not None:
            self._task.cancel()


def _settle(fut: asyncio.Future[R], answer: R | None = None, exc: Exception | None = None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(answer)  # type: ignore[arg-type]
