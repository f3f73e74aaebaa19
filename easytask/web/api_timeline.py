"""A run's story on one time axis: the scheduler's events of every attempt, its agent's link
drops and returns, its output's density and its ERROR/WARN lines; and the line printed at a
moment (the chart's click-to-log jump)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.errors import APIError
from easytask.service.context import Services
from easytask.store.models import AuditEvent, Run, RunEvent, RunState, User, as_utc
from easytask.web.requests import ApiRequests
from easytask.web.runlog import parse_levels

MAX_BUCKETS = 600  # density points of one chart
MAX_MARKS = 500  # ERROR/WARN lines marked on one chart
MAX_LINK_EVENTS = 200  # agent link changes on one chart
MARK_TEXT = 200  # characters of a marked line sent with it
LEAD = 30.0  # at most this many seconds are shown before the run's first attempt was queued
MIN_LEAD = 2.0  # and at least this many; in between, a tenth of the run's span
LINK_MARKS = {"agent.online": "reconnect", "agent.lost": "disconnect"}
RunLookup = Callable[[Request, User], Awaitable[Run]]


def event_mark(kind: str, detail: str) -> str:
    """The kind of mark a run event is drawn as on the chart."""
    if kind == "terminating":
        if detail.startswith("killed by"):
            return "kill"
        if detail.startswith("timeout"):
            return "timeout"
        return "terminating"
    return {
        "queued": "queued",
        "dispatched": "dispatched",
        "started": "started",
        "retry scheduled": "retry",
        "agent lost": "disconnect",
        "reattached": "reconnect",
        "resumed": "handoff",
        "handed over": "handoff",
        "finished": "end",
    }.get(kind, "info")


def epoch(value: Any) -> float:
    """A stored time as seconds since the epoch."""
    return float(as_utc(value).timestamp())


def event_json(event: RunEvent, attempt: Run) -> dict[str, Any]:
    """One scheduler event on the axis, with the attempt it belongs to."""
    return {
        "at": epoch(event.at),
        "kind": event.kind,
        "mark": event_mark(event.kind, event.detail),
        "detail": event.detail,
        "run": attempt.id,
        "attempt": attempt.attempt,
    }


def link_json(event: AuditEvent) -> dict[str, Any]:
    """An agent's link going down or coming back, from the audit log."""
    detail = json.loads(event.detail)
    text = "link to the server lost" if event.action == "agent.lost" else "online"
    if detail.get("reason"):
        text += f": {detail['reason']}"
    return {
        "at": epoch(event.at),
        "kind": event.action,
        "mark": LINK_MARKS[event.action],
        "detail": text,
        "run": None,
        "attempt": None,
    }


def density(counts: list[tuple[int, int]], start: float, bucket: float) -> dict[str, Any]:
    """Lines per second in buckets from `start`; empty buckets between lines are zeros."""
    if not counts:
        return {"bucket": bucket, "t": [], "lines": []}
    by_index = dict(counts)
    last = counts[-1][0]
    indexes = range(0, last + 1)
    return {
        "bucket": bucket,
        "t": [start + i * bucket for i in indexes],
        "lines": [by_index.get(i, 0) / bucket for i in indexes],
    }


class TimelineApi:
    """GET /api/runs/{id}/timeline and /api/runs/{id}/seek, read as the run itself is."""

    def __init__(self, services: Services, api: ApiRequests, run_for: RunLookup) -> None:
        self.services = services
        self.api = api
        self.run_for = run_for

    async def timeline(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/timeline: events, link changes, density and marks, in epoch seconds."""
        run = await self.run_for(request, user)
        assert run.id is not None
        store = self.services.store
        await self.services.writer.flush()
        attempts = await store.call(store.run_attempts, run)
        by_id = {a.id: a for a in attempts}
        events = [
            event_json(e, by_id[e.run_id])
            for e in await store.call(store.events_of_runs, list(by_id))
        ]
        now = time.time()
        start = min(epoch(a.created_at) for a in attempts)
        final = all(a.state in RunState.FINAL for a in attempts)
        ends = [epoch(a.finished_at) for a in attempts if a.finished_at is not None]
        end = max(ends) if final and ends else None
        lead = min(LEAD, max(MIN_LEAD, ((end or now) - start) / 10))
        agent = run.agent or (run.host if run.connection == "agent" else "")
        if agent:  # its link's drops and returns from the lead-in to the run's end
            since = datetime.fromtimestamp(start - lead, UTC)
            for row in await store.call(store.agent_link_events, agent, since, MAX_LINK_EVENTS):
                if row.action in LINK_MARKS and (end is None or epoch(row.at) <= end):
                    events.append(link_json(row))
        events.sort(key=lambda e: e["at"])
        span = await store.call(store.line_span, run.id)
        lines: dict[str, Any] = {"bucket": 1.0, "t": [], "lines": []}
        if span is not None:
            low = math.floor(span[0])
            bucket = float(max(1, math.ceil((span[1] - low) / MAX_BUCKETS)))
            counts = await store.call(store.line_density, run.id, float(low), bucket)
            lines = density(counts, float(low), bucket)
        marks = await store.call(store.level_marks, run.id, ("WARN", "ERROR"), MAX_MARKS + 1)
        return JSONResponse(
            {
                "run": run.id,
                "agent": agent or None,
                "state": run.state,
                "final": final,
                "start": start,
                "end": end,
                "lead": lead,
                "now": now,
                "attempts": [
                    {"run": a.id, "attempt": a.attempt, "state": a.state} for a in attempts
                ],
                "events": events,
                "density": lines,
                "marks": [
                    {"seq": seq, "at": ts, "level": level, "text": text[:MARK_TEXT]}
                    for seq, ts, level, text in marks[:MAX_MARKS]
                ],
                "marks_truncated": len(marks) > MAX_MARKS,
            }
        )

    async def seek(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/seek?at=EPOCH[&level=..]: the first line printed at or after a
        moment (else the last one), its seq and its position in the level-filtered log."""
        run = await self.run_for(request, user)
        assert run.id is not None
        raw = request.query_params.get("at") or ""
        try:
            at = float(raw)
        except ValueError:
            at = math.nan
        if not math.isfinite(at) or at < 0:
            raise APIError("at must be a time in seconds since the epoch (e.g. 1767225600.5)")
        levels = parse_levels(request.query_params.get("level"))
        store = self.services.store
        await self.services.writer.flush()
        found = await store.call(store.line_at, run.id, at, levels or None)
        seq, pos = found if found is not None else (None, None)
        return JSONResponse({"run": run.id, "at": at, "seq": seq, "pos": pos})

    def routes(self) -> list[Route]:
        """The timeline routes."""
        route = self.api.route
        return [
            Route("/api/runs/{run_id}/timeline", route(self.timeline)),
            Route("/api/runs/{run_id}/seek", route(self.seek)),
        ]
