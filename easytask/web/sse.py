"""Server-sent events: the wire format and one run's live log with `Last-Event-ID` resume."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from easytask.errors import APIError
from easytask.scheduler import events
from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import RunState
from easytask.store.serialize import run_dict
from easytask.web.requests import MAX_ID

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
    """The last seq the client has: `Last-Event-ID` (a reconnect) wins over `?after=`; a value
    that is not a seq is refused (400)."""
    for name, value in (
        ("Last-Event-ID", request.headers.get("last-event-id")),
        ("after", request.query_params.get("after")),
    ):
        if value:
            try:
                number = int(value)
            except ValueError:
                number = -1
            if not 0 <= number <= MAX_ID:
                raise APIError(f"{name} must be an event id (a number from 0 to {MAX_ID})")
            return number
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
    services: Services, run_id: int, after: int, follow: bool = True, keepalive: float = KEEPALIVE
) -> AsyncIterator[str]:
    """Lines of a run after seq `after` (stored, then live), its state changes, then `end`.

    Every line is sent once and in order: live events are deduplicated by seq, and a gap (the
    viewer's queue overflowed, or lines were published while it was catching up) is filled
    from the store.
    """
    store = services.store
    sub = services.hub.subscribe(f"run:{run_id}")
    last = after

    async def catch_up(upto: int | None = None) -> AsyncIterator[str]:
        nonlocal last
        await services.writer.flush()
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
        yield event({**events.run_row(run_dict(run)), "run": run.id})
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


async def job_stream(
    reader: Reader, job_id: int, follow: bool, lines: bool = True, runs: bool = True
) -> AsyncIterator[str]:
    """Stored then live events of a job: run states (unless not `runs`: a client that
    only prints lines and waits for the end), lines (unless not `lines`), and its end; only
    of the runs on hosts the reader may see."""
    services = reader.services
    store = services.store
    # jobstate: carries a job's events except its lines (a status grid gets no line flood)
    sub = services.hub.subscribe(f"job:{job_id}" if lines else f"jobstate:{job_id}")
    last: dict[int, int] = {}
    try:
        await services.writer.flush()
        # runs (or their hosts), the first lines and the job, in one trip to the database
        snapshot, hosts, rows, job = await reader.job_stream_start(
            job_id, runs, 5000 if lines else 0
        )
        for run in snapshot:
            yield job_event(events.run_row(run_dict(run)))
        while rows:
            for row in rows:
                last[row.run_id] = row.seq
                yield job_event(job_line(row, hosts.get(row.run_id, "")))
            if len(rows) < 5000:
                break
            rows = await reader.job_lines(job_id, rows[-1].id or 0, 5000)
            if len(rows) < 5000:  # the job's state, read after its last line
                job = await store.call(store.get_job, job_id)
        if job is None or job.state in RunState.FINAL or not follow:
            if job is not None:
                yield job_event(events.job_state(job_id, job.state))
            return
        while True:
            event = await sub.get(timeout=15)
            if sub.overflowed:
                await services.writer.flush()
                if not lines:
                    # State events may have been dropped with the lines: resend every state.
                    sub.reset()
                    for run in await reader.job_runs(job_id):
                        yield job_event(events.run_row(run_dict(run)))
                    job = await store.call(store.get_job, job_id)
                    if job is not None and job.state in RunState.FINAL:
                        yield job_event(events.job_state(job_id, job.state))
                        return
                    continue
                for run_id in hosts:
                    for row in await store.call(
                        store.read_lines, run_id, after_seq=last.get(run_id, 0)
                    ):
                        last[row.run_id] = row.seq
                        yield job_event(job_line(row, hosts[run_id]))
                sub.reset()
                continue
            if event is None:
                yield ": keepalive\n\n"
                continue
            # everything already waiting goes out in one write
            chunk: list[str] = []
            while event is not None:
                if "host" in event and not reader.sees(event["host"] or ""):
                    pass  # of a run on a host outside the reader's scope
                elif event["t"] == "line":
                    if lines and event["seq"] > last.get(event["run"], 0):
                        last[event["run"]] = event["seq"]
                        chunk.append(job_event(event))
                elif runs or event["t"] != "run":
                    chunk.append(job_event(event))
                    if event["t"] == "job":
                        yield "".join(chunk)
                        return
                event = sub.get_nowait() if len(chunk) < 1000 else None
            if chunk:
                yield "".join(chunk)
    finally:
        sub.close()


def job_event(event: dict[str, Any]) -> str:
    """One event of a job's stream (no id: a job's stream resumes from the store)."""
    if "_sse" in event:  # the run stream's cached encoding rides on shared live events
        event = {k: v for k, v in event.items() if k != "_sse"}
    return "data: " + json.dumps(event, separators=(",", ":")) + "\n\n"


def job_line(row: Any, host: str) -> dict[str, Any]:
    """A stored line as a job stream's line event."""
    return events.line(row.run_id, host, row.seq, row.ts, row.stream, row.level, row.text)
