"""Export API: the filtered run history as JSON Lines or CSV, streamed, with a signed manifest."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from easytask import exports
from easytask.errors import APIError
from easytask.service.context import Services
from easytask.service.export import Exporter
from easytask.service.reading import Reader
from easytask.store.models import RunState, User
from easytask.web.requests import ApiRequests, no_nul, source
from easytask.web.runfilter import parse_time

FILTERS = ("since", "until", "task", "status", "host", "user", "q")


class ExportApi:
    """GET /api/export (the stream), its manifest, and the server's export public key."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.exporter = Exporter(services)
        self.api = api

    @staticmethod
    def filters(request: Request) -> dict[str, Any]:
        """The export's filters from the query, checked (400 before anything is streamed)."""
        no_nul(request)
        q = request.query_params
        chosen = {name: (q.get(name) or "").strip() for name in FILTERS}
        statuses = [s.strip() for v in q.getlist("status") for s in v.split(",") if s.strip()]
        chosen["status"] = ",".join(statuses)
        bad = [s for s in statuses if s not in RunState.ALL]
        if bad:
            raise APIError(f"unknown status {bad[0]!r}; use one of {', '.join(RunState.ALL)}")
        try:
            since = parse_time(chosen["since"] or None)
            until = parse_time(chosen["until"] or None)
        except ValueError as exc:
            raise APIError(f"since/until: {exc}") from exc
        return {
            "shown": {k: v for k, v in chosen.items() if v},
            "query": {
                "since": since,
                "until": until,
                "status": statuses or None,
                "host": chosen["host"] or None,
                "task": chosen["task"] or None,
                "user": chosen["user"] or None,
                "text": chosen["q"] or None,
            },
        }

    async def export(self, request: Request, user: User) -> Response:
        """GET /api/export?since&until&task&status&host&user&format=jsonl|csv&logs=1."""
        fmt = request.query_params.get("format") or "jsonl"
        if fmt not in exports.FORMATS:
            raise APIError(f"format must be one of {', '.join(exports.FORMATS)}")
        logs = request.query_params.get("logs", "0") in ("1", "true", "yes", "on")
        filters = self.filters(request)
        reader = await Reader.of(self.exporter.services, user)
        if reader.scoped:  # the record says the export holds only the runs of the scope
            filters["shown"]["scope"] = user.scope
        where = source(request)
        manifest = await self.exporter.start(user.name, where, fmt, logs, filters["shown"])
        name = f"easytask-export-{manifest['export']}.{fmt}"
        return StreamingResponse(
            self.exporter.stream(reader, where, filters["query"], fmt, logs, manifest),
            media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
            headers={
                # the file name is ours: nothing from the request reaches a header
                "content-disposition": f'attachment; filename="{name}"',
                "x-easytask-export": manifest["export"],
                "cache-control": "no-store",
            },
        )

    async def manifest(self, request: Request, user: User) -> Response:
        """GET /api/exports/{export_id}/manifest: the signed manifest of a finished export."""
        path = self.exporter.finished(request.path_params["export_id"])
        return FileResponse(path, media_type="application/json")

    async def public_key(self, request: Request, user: User) -> Response:
        """GET /api/export/key: the public key that signs export manifests."""
        return JSONResponse(self.exporter.public_key())

    def routes(self) -> list[Route]:
        """The export routes (any signed-in role)."""
        return [
            Route("/api/export", self.api.route(self.export)),
            Route("/api/export/key", self.api.route(self.public_key)),
            Route("/api/exports/{export_id}/manifest", self.api.route(self.manifest)),
        ]
