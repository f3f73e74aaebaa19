"""The live hub: order, topics, rounds of delivery and a viewer that falls behind."""

from __future__ import annotations

import asyncio
from pathlib import Path

from easytask.scheduler.hub import LiveHub


def test_events_arrive_in_order_once_per_subscriber_after_the_loop_turns() -> None:
    """A burst published in one callback is queued whole on the next turn, in order, once each."""

    async def main() -> None:
        hub = LiveHub(interval=0.005)
        both = hub.subscribe("run:1", "job:1")
        other = hub.subscribe("run:2")
        for seq in range(1, 101):
            hub.publish({"t": "line", "seq": seq}, "run:1", "job:1")
        hub.publish({"t": "run", "state": "success"}, "run:1", "job:1")
        assert both.pending == 0  # nothing yet: delivery waits for the round
        first = await both.get(timeout=10)
        assert first == {"t": "line", "seq": 1}
        assert both.pending == 100
        rest = both.take(1000)
        assert [e.get("seq") for e in rest] == [*range(2, 101), None]
        assert rest[-1]["t"] == "run"
        assert other.pending == 0 and other.take(10) == []
        hub.publish({"t": "nobody"}, "run:3")  # no subscriber: dropped at once
        assert hub._pending == []

    asyncio.run(main())


def test_rounds_are_at_least_the_interval_apart() -> None:
    """While events keep coming, the next round waits until the interval has passed."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hub = LiveHub(interval=0.2)
        sub = hub.subscribe("run:1")
        start = loop.time()
        hub.publish({"seq": 1}, "run:1")
        assert await sub.get(timeout=10) == {"seq": 1}
        hub.publish({"seq": 2}, "run:1")
        hub.publish({"seq": 3}, "run:1")
        assert await sub.get(timeout=10) == {"seq": 2}
        assert loop.time() - start >= 0.19  # grouped into the next round, not sent at once
        assert sub.take(1) == [{"seq": 3}]

    asyncio.run(main())


def test_a_jobs_end_does_not_wait_for_the_next_round() -> None:
    """Within the interval, a job's end goes out on the next turn, after what came before it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        hub = LiveHub(interval=5.0)
        sub = hub.subscribe("job:1")
        hub.publish({"t": "line", "seq": 1}, "job:1")
        assert await sub.get(timeout=10) == {"t": "line", "seq": 1}  # a round just went
        start = loop.time()
        hub.publish({"t": "run", "state": "success"}, "job:1")  # would wait for the next round
        hub.publish({"t": "job", "state": "success"}, "job:1")
        assert await sub.get(timeout=10) == {"t": "run", "state": "success"}
        assert sub.take(5) == [{"t": "job", "state": "success"}]
        assert loop.time() - start < 1.0  # not the 5 s round
        hub.publish({"t": "line", "seq": 2}, "job:1")  # and lines wait for their round again
        await asyncio.sleep(0.05)
        assert sub.pending == 0

    asyncio.run(main())


def test_a_viewer_that_falls_behind_is_marked_and_others_go_on() -> None:
    """A full queue sets `overflowed` on that viewer only; `reset` empties it to resume."""

    async def main() -> None:
        hub = LiveHub(maxsize=5, interval=0.001)
        slow = hub.subscribe("run:1")
        for seq in range(8):
            hub.publish({"seq": seq}, "run:1")
            if seq == 3:
                hub.flush()  # a round of 4 fits; the next 4 do not
        hub.flush()
        assert slow.overflowed and slow.pending == 4
        fresh = hub.subscribe("run:1")
        hub.publish({"seq": 10}, "run:1")
        assert await fresh.get(timeout=10) == {"seq": 10}
        assert await slow.get(timeout=10) == {"seq": 0}  # what it had, then the overflow
        slow.reset()
        assert not slow.overflowed and slow.pending == 0
        slow.close()
        fresh.close()
        assert hub.viewers == 0

    asyncio.run(main())


def test_without_an_event_loop_events_are_delivered_at_once() -> None:
    """Publishing outside an event loop (a script) delivers immediately."""
    hub = LiveHub()
    sub = hub.subscribe("agents")
    hub.publish({"t": "agent"}, "agents")
    assert sub.take(5) == [{"t": "agent"}]


def test_watched_tells_whether_a_topic_has_a_subscriber() -> None:
    """`watched` is true only while some subscriber follows one of the topics."""
    hub = LiveHub()
    assert not hub.watched("run:1", "job:1")
    sub = hub.subscribe("job:1")
    assert hub.watched("run:1", "job:1")
    assert not hub.watched("run:1")
    sub.close()
    assert not hub.watched("run:1", "job:1")


def test_a_states_only_follower_gets_no_line_events(tmp_path: Path) -> None:
    """`jobstate:ID` (GET /api/jobs/ID/events?lines=0) carries the cut notice but no lines."""
    from easytask.scheduler.logwriter import LogWriter
    from easytask.scheduler.output import RunOutput
    from easytask.store.db import Store
    from easytask.store.models import Job, Run

    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.create_schema()
    job, (run,) = store.create_job(Job(command="x"), [Run(host="h", command="x")])
    assert job.id is not None and run.id is not None
    hub = LiveHub()
    everything = hub.subscribe(f"job:{job.id}")
    states = hub.subscribe(f"jobstate:{job.id}")
    out = RunOutput(run.id, job.id, "h", hub, LogWriter(store), limit=400)
    out.data("stdout", b"".join(b"line %03d\n" % n for n in range(100)))
    got = everything.take(1000)
    assert [e["t"] for e in got].count("line") > 0
    assert [e["t"] for e in got if e["t"] != "line"] == ["notice"]
    assert states.take(1000) == [
        {
            "t": "notice",
            "run": run.id,
            "host": "h",
            "text": "output past the stored-output limit: keeping the tail only",
        }
    ]
    assert not hub.watched(f"run:{run.id}") and hub.watched(f"jobstate:{job.id}")
    store.close()
