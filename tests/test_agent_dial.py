"""Which server an agent's link goes to: the servers listed, in order, the next one dialled as
soon as the last fails or alongside it when it is slow to answer (`first_to_answer`)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from easytask.agent.link import HANDSHAKE_WAIT, HEDGE_AFTER, NoServerListening, first_to_answer
from tests.conftest import AgentFactory, ServerFactory

HEDGE = 0.2  # seconds, in the tests of the function alone


def answers(value: str, after: float = 0.0) -> Callable[[], Awaitable[str]]:
    async def dial() -> str:
        await asyncio.sleep(after)
        return value

    return dial


def fails(exc: Exception, after: float = 0.0) -> Callable[[], Awaitable[str]]:
    async def dial() -> str:
        await asyncio.sleep(after)
        raise exc

    return dial


class Hangs:
    """A dial that never answers; records whether it was cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    async def __call__(self) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable")


def pick(dials: list[tuple[str, Callable[[], Awaitable[str]]]]) -> tuple[str, str, list[str]]:
    """first_to_answer over `dials`: the winner's address and answer, and what was closed."""
    closed: list[str] = []

    async def main() -> tuple[str, str]:
        return await first_to_answer(dials, closed.append, hedge_after=HEDGE)

    where, conn = asyncio.run(main())
    return where, conn, closed


def test_the_first_server_that_answers_is_taken_without_dialling_the_next() -> None:
    hangs = Hangs()
    assert pick([("a", answers("A")), ("b", hangs)]) == ("a", "A", [])
    assert not hangs.cancelled  # never dialled


def test_a_failed_server_is_followed_at_once_by_the_next() -> None:
    started = time.monotonic()
    where, conn, _ = pick([("a", fails(ConnectionRefusedError())), ("b", answers("B"))])
    assert (where, conn) == ("b", "B")
    assert time.monotonic() - started < HEDGE  # no hedge wait after a failure


def test_a_silent_server_gets_company_after_the_hedge_and_loses_to_a_faster_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hangs = Hangs()
    started = time.monotonic()
    with caplog.at_level("INFO", logger="easytask.agent"):
        where, conn, closed = pick([("a", hangs), ("b", answers("B"))])
    assert (where, conn, closed) == ("b", "B", [])
    assert HEDGE <= time.monotonic() - started < HANDSHAKE_WAIT
    assert hangs.cancelled
    assert f"no answer from a within {HEDGE:g}s: dialling b too" in caplog.text


def test_a_slow_server_that_answers_first_still_wins() -> None:
    """Dialled first, answering after the hedge but before the next one does: it is taken,
    and the next is cancelled."""
    later = Hangs()
    assert pick([("a", answers("A", after=HEDGE * 1.5)), ("b", later)]) == ("a", "A", [])
    assert later.cancelled


def test_of_two_that_answer_together_one_is_taken_and_the_other_closed() -> None:
    async def main() -> tuple[tuple[str, str], list[str]]:
        loop = asyncio.get_running_loop()
        both: list[asyncio.Future[str]] = [loop.create_future(), loop.create_future()]
        closed: list[str] = []

        def dial(n: int) -> Callable[[], Awaitable[str]]:
            async def wait() -> str:
                if n == 1:  # the second dial answers, and the first with it, in one step
                    for fut, value in zip(both, "AB", strict=True):
                        loop.call_soon(fut.set_result, value)
                return await both[n]

            return wait

        won = await first_to_answer(
            [("a", dial(0)), ("b", dial(1))], closed.append, hedge_after=HEDGE
        )
        return won, closed

    (where, conn), closed = asyncio.run(main())
    assert {where: conn}.items() <= {"a": "A", "b": "B"}.items()
    assert closed == [{"A": "B", "B": "A"}[conn]]  # the other answer, closed


def test_none_answering_says_why_and_whether_none_listened() -> None:
    with pytest.raises(NoServerListening, match="a: refused; b: refused"):
        pick(
            [
                ("a", fails(ConnectionRefusedError("refused"))),
                ("b", fails(ConnectionRefusedError("refused"))),
            ]
        )
    with pytest.raises(OSError, match="a: refused; b: TimeoutError") as caught:
        pick([("a", fails(ConnectionRefusedError("refused"))), ("b", fails(TimeoutError()))])
    assert not isinstance(caught.value, NoServerListening)


def test_an_unexpected_error_is_raised_and_the_others_are_cancelled() -> None:
    hangs = Hangs()
    with pytest.raises(KeyError):
        pick([("a", hangs), ("b", fails(KeyError("bug"), after=0.01))])
    assert hangs.cancelled


def test_an_agent_whose_first_server_hangs_comes_online_on_the_next(
    start_server: ServerFactory, start_agent: AgentFactory
) -> None:
    """The first server listed keeps its port open and never answers (as a hung server does:
    the kernel completes the TCP handshake): a real agent dials the next one too after
    HEDGE_AFTER s and comes online there, long before its HANDSHAKE_WAIT; its log says why."""
    server = start_server()
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)  # never accepted
    first = f"127.0.0.1:{hung.getsockname()[1]}"
    try:
        started = time.monotonic()
        agent = start_agent(server, "hedged", "--server", f"{first},{server.agents_addr}")
        took = time.monotonic() - started
    finally:
        hung.close()
    assert server.agent_status("hedged") == "online"
    assert HEDGE_AFTER <= took < HANDSHAKE_WAIT / 2, took
    said = f"no answer from {first} within {HEDGE_AFTER:g}s: dialling {server.agents_addr} too"
    assert said in agent.output()
    assert "cannot connect" not in agent.output()
