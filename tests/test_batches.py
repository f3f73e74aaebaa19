"""Many callers' asks in one call (easytask/scheduler/batches.py): what is handed in while a
call is on its way goes in the next one; each caller gets its own answer or its own error."""

from __future__ import annotations

import asyncio

import pytest

from easytask.scheduler.batches import Gathered


def test_items_handed_in_during_a_call_go_together_in_the_next() -> None:
    """The first caller's item goes alone; the ten handed in while that call is on its way go
    in one call; each caller gets the answer to its own item."""
    calls: list[list[int]] = []

    async def main() -> None:
        release = asyncio.Event()

        async def fetch(items: list[int]) -> list[int]:
            calls.append(items)
            if len(calls) == 1:
                await release.wait()  # the first call is on its way while the others come
            return [i * 10 for i in items]

        gathered: Gathered[int, int] = Gathered(fetch)
        first = asyncio.ensure_future(gathered.put(0))
        async with asyncio.timeout(5):
            while not calls:
                await asyncio.sleep(0)
        rest = [asyncio.ensure_future(gathered.put(i)) for i in range(1, 11)]
        await asyncio.sleep(0)
        release.set()
        assert await first == 0
        assert await asyncio.gather(*rest) == [i * 10 for i in range(1, 11)]

    asyncio.run(main())
    assert calls == [[0], list(range(1, 11))]


def test_at_most_so_many_items_a_call() -> None:
    calls: list[list[int]] = []

    async def main() -> None:
        async def fetch(items: list[int]) -> list[int]:
            calls.append(items)
            return items

        gathered: Gathered[int, int] = Gathered(fetch, most=4)
        assert await asyncio.gather(*(gathered.put(i) for i in range(10))) == list(range(10))

    asyncio.run(main())
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_one_items_error_is_its_own_callers_only() -> None:
    """A call of several items that fails is made again item by item: the bad item's caller
    gets the error, the others their answers (and nothing is answered twice)."""
    calls: list[list[str]] = []

    async def main() -> list[object]:
        async def fetch(items: list[str]) -> list[str]:
            calls.append(items)
            if "bad" in items:
                raise ValueError("bad item")
            return [i.upper() for i in items]

        gathered: Gathered[str, str] = Gathered(fetch)
        return await asyncio.gather(
            *(gathered.put(i) for i in ("a", "bad", "c")), return_exceptions=True
        )

    answers = asyncio.run(main())
    assert answers[0] == "A" and answers[2] == "C"
    assert isinstance(answers[1], ValueError)
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_stopped_the_callers_waiting_are_cancelled() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def fetch(items: list[int]) -> list[int]:
            started.set()
            await asyncio.Event().wait()  # never answers
            return items

        gathered: Gathered[int, int] = Gathered(fetch)
        waiting = asyncio.ensure_future(gathered.put(1))
        async with asyncio.timeout(5):
            await started.wait()
        gathered.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(5):
                await waiting

    asyncio.run(main())
