"""API for reading one run's log: live events, windows by position, search and raw download."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from easytask.errors import APIError
from easytask.loglines import LEVELS, SYSTEM
from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import LogLine, Run, User
from easytask.web import sse
from easytask.web.requests import MAX_ID, ApiRequests, int_param

MAX_WINDOW = 2000
MAX_TEXT = 10_000  # characters of one line sent to the viewer; the raw download has all of it
MAX_QUERY = 1000  # characters of a search (SQLite refuses LIKE patterns past 50,000 bytes)
RAW_CHUNK = 10_000


def parse_levels(value: str | None) -> list[str]:
    """`WARN,ERROR` into a list; every known level (or none) means no filter."""
    levels = [lv.strip().upper() for lv in (value or "").split(",") if lv.strip()]
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad:
        raise APIError(f"unknown level {bad[0]!r}; use one of {', '.join(LEVELS)}")
    return [] if set(levels) >= set(LEVELS) else sorted(set(levels), key=LEVELS.index)


def _int(request: Request, name: str, default: int, low: int = 0, high: int | None = None) -> int:
    """A number parameter from `low` (else 400); above `high` it is taken as `high`."""
    value = request.query_params.get(name)
    if value in (None, ""):
        return default
    try:
        number = int(value)
    except ValueError as exc:
        raise APIError(f"{name} must be a number") from exc
    if number < low or (high is None and number > MAX_ID):
        raise APIError(f"{name} must be a number from {low} to {high or MAX_ID}")
    return min(number, high) if high is not None else number


def line_json(row: LogLine) -> dict[str, Any]:
    """A line for the viewer; very long lines are cut (`cut` holds the full length)."""
    out: dict[str, Any] = {
        "seq": row.seq,
        "ts": row.ts,
        "stream": row.stream,
        "level": row.level,
        "text": row.text,
    }
    if len(row.text) > MAX_TEXT:
        out["text"] = row.text[:MAX_TEXT]
        out["cut"] = len(row.text)
    return out


class RunLogApi:
    """Endpoints under /api/runs/{id}/ used by the console's log viewer (and any client)."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def run_for(self, request: Request, user: User) -> Run:
        """The run a request names, read as every run endpoint reads it (404 if none)."""
        return await self._run(request, user)

    async def _run(self, request: Request, user: User) -> Run:
        """The run of the path, if the user may read it (404 otherwise)."""
        reader = await Reader.of(self.services, user)
        return await reader.run(int_param(request, "run_id"))

    async def events(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/events: SSE of lines after `Last-Event-ID`/`after`, states, `end`."""
        run = await self._run(request, user)
        assert run.id is not None
        follow = request.query_params.get("follow", "1") != "0"
        return sse.response(
            sse.run_stream(self.services, run.id, sse.resume_point(request), follow)
        )

    async def lines(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/lines: lines at positions offset.. of the level-filtered log."""
        run = await self._run(request, user)
        assert run.id is not None
        levels = parse_levels(request.query_params.get("level"))
        offset = _int(request, "offset", 0)
        limit = _int(request, "limit", 200, low=1, high=MAX_WINDOW)
        after = request.query_params.get("after_seq")
        after_seq = _int(request, "after_seq", 0) if after not in (None, "") else None
        store = self.services.store
        await self.services.writer.flush()
        out: dict[str, Any] = {"run": run.id, "state": run.state, "offset": offset}
        if request.query_params.get("count", "0") != "0":
            total, top = await store.call(store.count_lines, run.id, levels or None)
            out["total"] = total
            out["max_seq"] = top
        rows = await store.call(
            store.line_window,
            run.id,
            offset=offset,
            limit=limit,
            levels=levels or None,
            after_seq=after_seq,
        )
        out["lines"] = [line_json(r) for r in rows]
        return JSONResponse(out)

    async def search(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/search?q=: seq and view position of each line containing q.

        q is literal text (no wildcards, no query syntax), matched ignoring case.
        """
        run = await self._run(request, user)
        assert run.id is not None
        needle = request.query_params.get("q") or ""
        if not needle.strip():
            raise APIError("q is required")
        if len(needle) > MAX_QUERY:
            raise APIError(f"q is too long (at most {MAX_QUERY} characters)")
        if "\x00" in needle:
            raise APIError("q must not contain a NUL character")
        levels = parse_levels(request.query_params.get("level"))
        limit = _int(request, "limit", 10000, low=1, high=100_000)
        store = self.services.store
        await self.services.writer.flush()
        found = await store.call(
            store.search_lines, run.id, needle, levels=levels or None, limit=limit + 1
        )
        return JSONResponse(
            {
                "run": run.id,
                "q": needle,
                "truncated": len(found) > limit,
                "matches": [{"seq": seq, "pos": pos} for seq, pos in found[:limit]],
            }
        )

    async def raw(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/raw: the run's output as text/plain, streamed."""
        run = await self._run(request, user)
        assert run.id is not None
        system = request.query_params.get("system", "0") != "0"
        await self.services.writer.flush()
        return StreamingResponse(
            self._raw_lines(run.id, system),
            media_type="text/plain; charset=utf-8",
            headers={
                "content-disposition": f'attachment; filename="run-{run.id}.log"',
                "x-content-type-options": "nosniff",
            },
        )

    async def _raw_lines(self, run_id: int, system: bool) -> AsyncIterator[bytes]:
        store = self.services.store
        after = 0
        while True:
            rows = await store.call(store.line_tuples, run_id, after, RAW_CHUNK)
            if not rows:
                return
            after = rows[-1][0]
            yield "".join(r[4] + "\n" for r in rows if system or r[2] != SYSTEM).encode()
            if len(rows) < RAW_CHUNK:
                return

    def routes(self) -> list[Route]:
        """The log routes."""
        route = self.api.route
        return [
            Route("/api/runs/{run_id}/events", route(self.events)),
            Route("/api/runs/{run_id}/lines", route(self.lines)),
            Route("/api/runs/{run_id}/search", route(self.search)),
            Route("/api/runs/{run_id}/raw", route(self.raw)),
        ]
