"""API of job templates (admins manage them; whom a template allows launches it), of
approvals (a second user approves or rejects a launch that waits) and of the approval rules
(admins manage them)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.errors import APIError
from easytask.jobtemplate import may_launch
from easytask.service import approvalrules, approvals, templates
from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import RunState, User
from easytask.store.serialize import job_dict, run_dict
from easytask.web.requests import ApiRequests, body, int_param, source

ADMIN = ("admin",)
MAX_TEMPLATE_BODY = 256 * 1024


class TemplatesApi:
    """/api/templates, /api/approvals and /api/jobs/{id}/approve|reject."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def list_all(self, request: Request, user: User) -> Response:
        """GET /api/templates: every template, with whether this user may launch it."""
        store = self.services.store
        rows = await store.call(store.list_templates)
        out = []
        for row in rows:
            entry = templates.template_dict(row)
            definition = templates.definition_of(row)
            entry["may_launch"] = may_launch(definition, user.role, user.name)
            out.append(entry)
        return JSONResponse({"templates": out})

    async def get(self, request: Request, user: User) -> Response:
        """GET /api/templates/{name}."""
        row = await templates.get_template(self.services, request.path_params["name"])
        entry = templates.template_dict(row)
        entry["may_launch"] = may_launch(templates.definition_of(row), user.role, user.name)
        return JSONResponse(entry)

    async def create(self, request: Request, user: User) -> Response:
        """POST /api/templates: a new template (409 if the name is taken)."""
        data = await body(request, limit=MAX_TEMPLATE_BODY)
        row = await templates.save_template(
            self.services, user.name, source(request), data, create=True
        )
        return JSONResponse(templates.template_dict(row), status_code=201)

    async def update(self, request: Request, user: User) -> Response:
        """PUT /api/templates/{name}: replace a template's definition."""
        data = await body(request, limit=MAX_TEMPLATE_BODY)
        name = request.path_params["name"]
        data.setdefault("name", name)
        row = await templates.save_template(
            self.services, user.name, source(request), data, create=False, name=name
        )
        return JSONResponse(templates.template_dict(row))

    async def delete(self, request: Request, user: User) -> Response:
        """DELETE /api/templates/{name}."""
        name = request.path_params["name"]
        await templates.delete_template(self.services, user.name, source(request), name)
        return JSONResponse({"name": name, "removed": True})

    async def launch(self, request: Request, user: User) -> Response:
        """POST /api/templates/{name}/launch: {"params": {...}, "limit": "..."}; 201 with the
        job and its runs, or 202 with a job awaiting approval (no runs)."""
        data = await body(request)
        done = await approvals.launch(
            self.services,
            user,
            source(request),
            request.path_params["name"],
            data.get("params") if data.get("params") is not None else {},
            data.get("limit"),
            self.services.approval_hook,
        )
        approval = approvals.approval_dict(done.approval) if done.approval else None
        return JSONResponse(
            {
                "job": job_dict(done.job),
                "runs": [run_dict(r) for r in done.runs],
                "approval": approval,
            },
            status_code=202 if done.approval else 201,
        )

    async def list_approvals(self, request: Request, user: User) -> Response:
        """GET /api/approvals?state=awaiting|all: approval requests, newest first, with
        whether this user may decide each."""
        await approvals.expire_approvals(self.services, self.services.approval_hook)
        wanted = request.query_params.get("state") or "awaiting"
        states = {"awaiting": RunState.AWAITING_APPROVAL, "all": None}
        if wanted not in states:
            raise APIError("state must be awaiting or all")
        store = self.services.store
        reader = await Reader.of(self.services, user)
        rows = [
            r
            for r in await store.call(store.list_approvals, states[wanted])
            if reader.sees_approval(r)
        ]
        defs = {r.name: templates.definition_of(r) for r in await store.call(store.list_templates)}
        out = []
        for row in rows:
            entry = approvals.approval_dict(row)
            definition = defs.get(row.template)
            entry["may_decide"] = approvals.may_decide(user, row, definition)
            out.append(entry)
        return JSONResponse({"approvals": out})

    async def get_approval(self, request: Request, user: User) -> Response:
        """GET /api/jobs/{id}/approval: the approval request of a job."""
        job_id = int_param(request, "job_id")
        store = self.services.store
        row = await store.call(store.get_approval, job_id)
        if row is None or not (await Reader.of(self.services, user)).sees_approval(row):
            raise APIError(f"job {job_id} has no approval request", status=404)
        return JSONResponse(approvals.approval_dict(row))

    async def approve(self, request: Request, user: User) -> Response:
        """POST /api/jobs/{id}/approve: {"comment": "..."}; starts the launch."""
        return await self._decide(request, user, approvals.approve)

    async def reject(self, request: Request, user: User) -> Response:
        """POST /api/jobs/{id}/reject: {"comment": "..."} (required)."""
        return await self._decide(request, user, approvals.reject)

    async def _decide(self, request: Request, user: User, decide: Any) -> Response:
        """One decision on a launch awaiting approval (after the expired ones are settled)."""
        data = await body(request)
        await approvals.expire_approvals(self.services, self.services.approval_hook)
        row = await decide(
            self.services,
            user,
            source(request),
            int_param(request, "job_id"),
            data.get("comment"),
            self.services.approval_hook,
        )
        return JSONResponse(approvals.approval_dict(row))

    async def list_rules(self, request: Request, user: User) -> Response:
        """GET /api/approval-rules: the approval rules, the server's setting first (read-only)."""
        return JSONResponse({"rules": await approvalrules.list_rules(self.services)})

    async def add_rule(self, request: Request, user: User) -> Response:
        """POST /api/approval-rules: {"pattern": "...", "note": "..."}; 201 with the rule."""
        data = await body(request)
        row = await approvalrules.add_rule(self.services, user, source(request), data)
        return JSONResponse(approvalrules.rule_dict(row), status_code=201)

    async def pause_rule(self, request: Request, user: User) -> Response:
        """PATCH /api/approval-rules/{rule_id}: {"paused": true|false}."""
        data = await body(request)
        row = await approvalrules.pause_rule(
            self.services, user, source(request), request.path_params["rule_id"], data
        )
        return JSONResponse(approvalrules.rule_dict(row))

    async def remove_rule(self, request: Request, user: User) -> Response:
        """DELETE /api/approval-rules/{rule_id}."""
        row = await approvalrules.remove_rule(
            self.services, user, source(request), request.path_params["rule_id"]
        )
        return JSONResponse({"id": row.id, "pattern": row.pattern, "removed": True})

    def routes(self) -> list[Route]:
        """The template, approval and approval rule routes."""
        route = self.api.route
        return [
            Route("/api/approval-rules", route(self.list_rules), methods=["GET"]),
            Route("/api/approval-rules", route(self.add_rule, ADMIN), methods=["POST"]),
            Route(
                "/api/approval-rules/{rule_id}", route(self.pause_rule, ADMIN), methods=["PATCH"]
            ),
            Route(
                "/api/approval-rules/{rule_id}", route(self.remove_rule, ADMIN), methods=["DELETE"]
            ),
            Route("/api/templates", route(self.list_all), methods=["GET"]),
            Route("/api/templates", route(self.create, ADMIN), methods=["POST"]),
            Route("/api/templates/{name}", route(self.get), methods=["GET"]),
            Route("/api/templates/{name}", route(self.update, ADMIN), methods=["PUT"]),
            Route("/api/templates/{name}", route(self.delete, ADMIN), methods=["DELETE"]),
            Route("/api/templates/{name}/launch", route(self.launch), methods=["POST"]),
            Route("/api/approvals", route(self.list_approvals), methods=["GET"]),
            Route("/api/jobs/{job_id}/approval", route(self.get_approval), methods=["GET"]),
            Route("/api/jobs/{job_id}/approve", route(self.approve), methods=["POST"]),
            Route("/api/jobs/{job_id}/reject", route(self.reject), methods=["POST"]),
        ]
