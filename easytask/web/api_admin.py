"""The API's administration: health, who am I, the audit log and pruning."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.durations import parse_duration
from easytask.errors import APIError
from easytask.service.context import Services
from easytask.store.models import AuditEvent, User
from easytask.store.serialize import iso_utc
from easytask.web.requests import ApiRequests, body, id_number, no_nul, positive, source
from easytask.web.runfilter import parse_time


def event_dict(e: AuditEvent) -> dict[str, Any]:
    """An audit event as the API lists it (and the console exports it)."""
    return {
        "id": e.id,
        "at": iso_utc(e.at),
        "actor": e.actor,
        "action": e.action,
        "source": e.source,
        "detail": json.loads(e.detail),
        "hash": e.hash,
    }


class AdminApi:
    """/api/health, /api/whoami, /api/audit and /api/prune."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def whoami(self, request: Request, user: User) -> Response:
        """GET /api/whoami."""
        return JSONResponse({"name": user.name, "role": user.role})

    async def list_audit(self, request: Request, user: User) -> Response:
        """GET /api/audit: events, newest first (since, action, actor, before, limit)."""
        no_nul(request)
        q = request.query_params
        store = self.services.store
        try:
            rows = await store.call(
                store.audit_events,
                since=parse_time(q.get("since")),
                action=q.get("action") or None,
                actor=q.get("actor") or None,
                before_id=id_number(q["before"], "before") if q.get("before") else None,
                limit=min(positive(q.get("limit") or "200", "limit"), 5000),
            )
        except ValueError as exc:
            raise APIError(str(exc)) from exc
        return JSONResponse({"events": [event_dict(e) for e in rows]})

    async def verify_audit(self, request: Request, user: User) -> Response:
        """GET /api/audit/verify: walk the keyed chain and check it against the checkpoints."""
        return JSONResponse(await self.services.audit_anchor.verify())

    async def checkpoint_audit(self, request: Request, user: User) -> Response:
        """POST /api/audit/checkpoint: sign and write a checkpoint of the chain's head now."""
        written = await self.services.audit_anchor.checkpoint(force=True)
        return JSONResponse({"written": written is not None, "checkpoint": written})

    async def prune(self, request: Request, user: User) -> Response:
        """POST /api/prune: {dry_run, retention, retention_failed} (admin; audited)."""
        data = await body(request)
        overrides: dict[str, float | None] = {}
        for name in ("retention", "retention_failed"):
            value = data.get(name)
            try:
                overrides[name] = parse_duration(value) if value not in (None, "") else None
            except (TypeError, ValueError) as exc:
                raise APIError(f"{name}: {exc}") from exc
            if overrides[name] is not None and (overrides[name] or 0) <= 0:
                raise APIError(f"{name} must be positive")
        dry_run = bool(data.get("dry_run"))
        result = await self.services.retention.prune(dry_run=dry_run, **overrides)
        action = "prune.dry_run" if dry_run else "prune"
        await self.services.audit(user.name, action, source(request), result)
        return JSONResponse(result)

    def routes(self) -> list[Route]:
        """The administration routes."""
        route = self.api.route
        audit = ("admin", "auditor")
        return [
            Route("/api/health", health),
            Route("/api/whoami", route(self.whoami)),
            Route("/api/audit", route(self.list_audit, audit)),
            Route("/api/audit/verify", route(self.verify_audit, audit)),
            Route(
                "/api/audit/checkpoint",
                route(self.checkpoint_audit, ("admin",)),
                methods=["POST"],
            ),
            Route("/api/prune", route(self.prune, ("admin",)), methods=["POST"]),
        ]


async def health(request: Request) -> Response:
    """GET /api/health: the process answers (no sign-in)."""
    return JSONResponse({"ok": True})
