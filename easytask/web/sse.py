"""Server-sent events: the wire format and one run's live log with `Last-Event-ID` resume."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from easytask.scheduler import events
from easytask.store.models import RunState
from easytask.store.serialize import run_dict

if TYPE_CHECKING:
    from easytask.server import Server

CHUNK = 5000  # stored lines read per query while catching up
KEEPALIVE = 15.0


def event(data: dict[str, Any], *, id: int | None = None) -> str:
    """One SSE event; `id` is what the browser sends back as `Last-Event-ID` on reconnect."""
    head = f"id: {id}\n" if id is not None else ""
    return head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n"


def response(stream: AsyncIterator[str]) -> StreamingResponse:
    """A `text/event-stream` response that proxies do not buffer."""
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
    )


def resume_point(request: Request) -> int:
    """The last seq the client has: `Last-Event-ID` (a reconnect) wins over `?after=`."""
    for value in (request.headers.get("last-event-id"), request.query_params.get("after")):
        if value:
            try:
                return max(int(value), 0)
            except ValueError:
                continue
    return 0


BATCH = 2000  # live events sent in one write at most


def _encoded_line(item: dict[str, Any]) -> str:
    """A live line's SSE text, encoded once and shared by every viewer of the run."""
    text = item.get("_sse")
    if text is None:
        data = {k: v for k, v in item.items() if k not in ("host", "_sse")}
        text = event(data, id=int(item["seq"]))
        item["_sse"] = text
    return str(text)


def line_event(run_id: int, row: tuple[int, float, str, str, str]) -> str:
    """A stored log line (seq, ts, stream, level, text) as an SSE event whose id is its seq."""
    seq, ts, stream, level, text = row
    return event(events.line(run_id, None, seq, ts, stream, level, text), id=seq)


async def run_stream(
    server: Server, run_id: int, after: int, follow: bool = True, keepalive: float = KEEPALIVE
) -> AsyncIterator[str]:
    """Lines of a run after seq `after` (stored, then live), its state changes, then `end`.

    Every line is sent once and in order: live events are deduplicated by seq, and a gap (the
    viewer's queue overflowed, or lines were published while it was catching up) is filled
    from the store.
    """
    store = server.store
    sub = server.hub.subscribe(f"run:{run_id}")
    last = after

    async def catch_up(upto: int | None = None) -> AsyncIterator[str]:
        nonlocal last
        await server.writer.flush()
        while upto is None or last < upto:
            limit = CHUNK if upto is None else min(CHUNK, upto - last)
            rows = await store.call(store.line_tuples, run_id, last, limit)
            if rows:
                last = rows[-1][0]
                # One write per chunk, not per line: a long replay costs little more than its JSON.
                yield "".join(line_event(run_id, row) for row in rows)
            if len(rows) < limit:
                return

    try:
        yield "retry: 2000\n\n"
        async for chunk in catch_up():
            yield chunk
        run = await store.call(store.get_run, run_id)
        if run is None:
            return
        yield event({"t": "run", **run_dict(run), "run": run.id})
        if run.state in RunState.FINAL or not follow:
            async for chunk in catch_up():
                yield chunk
            if run.state in RunState.FINAL:
                yield event(events.run_end(run_id, run.state, run.exit_code))
            return
        while True:
            item = await sub.get(timeout=keepalive)
            if sub.overflowed:
                async for chunk in catch_up():
                    yield chunk
                sub.reset()
                continue
            if item is None:
                yield ": keepalive\n\n"
                continue
            # Take whatever else is queued too and send it as one write: under load the batch
            # grows by itself, so the cost per line stays small however many viewers there are.
            items = [item, *sub.take(BATCH - 1)]
            out: list[str] = []
            ended = False
            for item in items:
                if item.get("t") == "line":
                    seq = int(item["seq"])
                    if seq <= last:
                        continue
                    if seq > last + 1:
                        async for chunk in catch_up(seq - 1):
                            out.append(chunk)
                    last = seq
                    out.append(_encoded_line(item))
                elif item.get("t") == "run":
                    out.append(event(item))
                    if item.get("state") in RunState.FINAL:
                        async for chunk in catch_up():
                            out.append(chunk)
                        out.append(
                            event(events.run_end(run_id, item["state"], item.get("exit_code")))
                        )
                        ended = True
                        break
            if out:
                yield "".join(out)
            if ended:
                return
    finally:
        sub.close()
