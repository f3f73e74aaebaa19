"""The API of playbooks: run a playbook sent or on the server, list them."""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.errors import APIError
from easytask.plan import PlaybookPlan, tag_names
from easytask.service import jobs
from easytask.service.context import Services
from easytask.service.planning import plan_bundle, plan_file
from easytask.service.playbooks import playbook_listing, playbook_path
from easytask.store.models import User
from easytask.web.api_jobs import become_request, submitted
from easytask.web.requests import ROLES_OPERATE, ApiRequests, body, source

MAX_PLAYBOOK_BODY = 64 << 20


def pattern_limit(data: dict[str, Any]) -> str | None:
    """The body's `limit`: a host pattern, or None."""
    limit = data.get("limit") or None
    if limit is not None and not isinstance(limit, str):
        raise APIError("limit must be a host pattern (a string)")
    return limit


class PlaybooksApi:
    """/api/playbooks."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def run_playbook(self, request: Request, user: User) -> Response:
        """POST /api/playbooks/run: a playbook's text and files, --limit, extra vars, tags and
        `become`/`become_user` (the command line's: the play's and tasks' keys go over it);
        `?runs=0` as for POST /api/jobs."""
        data = await body(request, limit=MAX_PLAYBOOK_BODY)
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise APIError("text (the playbook) is required")
        files_in = data.get("files") or {}
        extra = data.get("extra_vars") or {}
        if not isinstance(files_in, dict) or not isinstance(extra, dict):
            raise APIError("files and extra_vars must be objects")
        try:
            files = {str(k): base64.b64decode(v, validate=True) for k, v in files_in.items()}
        except (ValueError, TypeError) as exc:
            raise APIError(f"files must hold base64 data: {exc}") from exc
        limit = pattern_limit(data)
        plan = await plan_bundle(
            self.services,
            str(data.get("name") or "playbook.yml"),
            text,
            files,
            limit,
            extra,
            tag_names(data.get("tags"), "tags"),
            tag_names(data.get("skip_tags"), "skip_tags"),
            become_request(data),
        )
        return await self._submitted(request, user, plan, {})

    async def run_playbook_file(self, request: Request, user: User) -> Response:
        """POST /api/playbooks/{file}/run: run a playbook of the server's playbooks directory.

        `?runs=0` as for POST /api/jobs."""
        path = playbook_path(self.services, request.path_params["file"])
        data = await body(request)
        extra = data.get("extra_vars") or {}
        if not isinstance(extra, dict):
            raise APIError("extra_vars must be an object")
        limit = pattern_limit(data)
        plan = await plan_file(
            self.services,
            path,
            extra,
            limit,
            tag_names(data.get("tags"), "tags"),
            tag_names(data.get("skip_tags"), "skip_tags"),
            become_request(data),
        )
        return await self._submitted(request, user, plan, {"file": path.name})

    async def _submitted(
        self, request: Request, user: User, plan: PlaybookPlan, extra: dict[str, str]
    ) -> Response:
        job, runs = await jobs.submit_plan(self.services, user, source(request), plan, extra)
        return await submitted(self.services, job, runs, request)

    async def list_playbooks(self, request: Request, user: User) -> Response:
        """GET /api/playbooks: the playbooks of the server's playbooks directory."""
        return JSONResponse(await playbook_listing(self.services))

    def routes(self) -> list[Route]:
        """The playbook routes."""
        route = self.api.route
        op = ROLES_OPERATE
        return [
            Route("/api/playbooks/run", route(self.run_playbook, op), methods=["POST"]),
            Route("/api/playbooks", route(self.list_playbooks)),
            Route("/api/playbooks/{file}/run", route(self.run_playbook_file, op), methods=["POST"]),
        ]
