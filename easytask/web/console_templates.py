"""The console's job templates and approvals: the Templates page (admins make, replace and delete
templates there), a template's launch form built from its parameters (each error shown by its
field), and the Approvals page (approve or reject, with a comment)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from easytask.errors import APIError, EasyTaskError
from easytask.jobtemplate import Param, TemplateDefinition, may_launch
from easytask.service import approvals, templates
from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import RunState, User
from easytask.web.console import Console
from easytask.web.errors import PageError, http_status

ADMIN = ("admin",)
EXAMPLE = """\
name: restart-service
description: restart one service on the web hosts
command: sudo systemctl restart {{ params.service | quote }}
pattern: web
limit: ""
timeout: 2m
params:
  - {name: service, type: choice, choices: [nginx, redis], default: nginx, required: true}
launch: {roles: [operator]}
approval: none
"""


def param_field(p: Param, value: Any, error: str) -> dict[str, Any]:
    """One field of a launch form: its input kind, label, value and error."""
    if value is None:
        value = p.default if p.default is not None else ""
    return {
        "name": p.name,
        "id": f"param-{p.name}",
        "label": p.label or p.name,
        "help": p.help,
        "type": p.type,
        "required": p.required and p.default is None,
        "value": value,
        "choices": list(p.choices),
        "min": p.min,
        "max": p.max,
        "regex": p.regex,
        "error": error,
    }


class TemplatePages:
    """/templates, /templates/{name} and /approvals."""

    def __init__(self, services: Services, console: Console) -> None:
        self.services = services
        self.console = console

    def _source(self, request: Request) -> str:
        return f"console {request.client.host if request.client else '?'}"

    async def _rows(self, user: User) -> list[dict[str, Any]]:
        store = self.services.store
        out = []
        for row in await store.call(store.list_templates):
            definition = templates.definition_of(row)
            out.append(
                {
                    "name": row.name,
                    "kind": definition.kind,
                    "description": definition.description,
                    "pattern": definition.pattern or definition.body,
                    "params": [p.label or p.name for p in definition.params],
                    "approval": definition.approval,
                    "may_launch": may_launch(definition, user.role, user.name),
                    "url": f"/templates/{quote(row.name, safe='')}",
                }
            )
        return out

    async def list_page(
        self, request: Request, user: User, status: int = 200, text: str = "", error: str = ""
    ) -> Response:
        """GET /templates: every template; admins get the form that makes one."""
        return self.console.render(
            request,
            user,
            "templates.html",
            status=status,
            section="templates",
            rows=await self._rows(user),
            text=text or EXAMPLE,
            error=error,
        )

    async def create(self, request: Request, user: User) -> Response:
        """POST /templates (admin): a new template from its YAML or JSON definition."""
        form = await self.console.form(request)
        text = form.get("definition", "")
        try:
            row = await templates.save_template(
                self.services, user.name, self._source(request), parse_definition(text), create=True
            )
        except EasyTaskError as exc:
            return await self.list_page(request, user, http_status(exc), text, str(exc))
        return RedirectResponse(f"/templates/{quote(row.name, safe='')}", status_code=303)

    async def _form(
        self,
        request: Request,
        user: User,
        name: str,
        status: int = 200,
        values: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        error: str = "",
        limit: str = "",
        text: str = "",
    ) -> Response:
        row = await templates.get_template(self.services, name)
        definition = templates.definition_of(row)
        values = values or {}
        errors = errors or {}
        fields = [
            param_field(p, values.get(p.name), errors.get(p.name, "")) for p in definition.params
        ]
        return self.console.render(
            request,
            user,
            "template.html",
            status=status,
            section="templates",
            tpl=definition,
            row=row,
            fields=fields,
            may=may_launch(definition, user.role, user.name),
            error=error,
            limit=limit,
            text=text or _yaml(definition),
            action=f"/templates/{quote(name, safe='')}",
        )

    async def template_page(self, request: Request, user: User) -> Response:
        """GET /templates/{name}: the launch form (and, for admins, the definition)."""
        return await self._form(request, user, request.path_params["name"])

    async def launch(self, request: Request, user: User) -> Response:
        """POST /templates/{name}/launch: check the values (each error by its field), then
        start the job or store it awaiting approval, and show it."""
        name = request.path_params["name"]
        form = await self.console.form(request)
        row = await templates.get_template(self.services, name)
        definition = templates.definition_of(row)
        given: dict[str, str] = {}
        for p in definition.params:
            if p.type == "boolean":
                given[p.name] = "true" if form.get(f"param.{p.name}") else "false"
            else:
                given[p.name] = form.get(f"param.{p.name}", "")
        limit = form.get("limit", "").strip()
        _values, problems = approvals.launch_values(definition, given)
        if problems:
            return await self._form(
                request, user, name, 400, given, problems, "fix the fields marked", limit
            )
        try:
            done = await approvals.launch(
                self.services,
                user,
                self._source(request),
                name,
                given,
                limit or None,
                self.services.approval_hook,
            )
        except EasyTaskError as exc:
            return await self._form(
                request, user, name, http_status(exc), given, {}, str(exc), limit
            )
        return RedirectResponse(f"/jobs/{done.job.id}", status_code=303)

    async def replace(self, request: Request, user: User) -> Response:
        """POST /templates/{name} (admin): replace the definition."""
        name = request.path_params["name"]
        form = await self.console.form(request)
        text = form.get("definition", "")
        try:
            data = parse_definition(text)
            await templates.save_template(
                self.services, user.name, self._source(request), data, create=False, name=name
            )
        except EasyTaskError as exc:
            return await self._form(
                request, user, name, http_status(exc), error=str(exc), text=text
            )
        return RedirectResponse(f"/templates/{quote(name, safe='')}", status_code=303)

    async def delete(self, request: Request, user: User) -> Response:
        """POST /templates/{name}/delete (admin)."""
        name = request.path_params["name"]
        await templates.delete_template(self.services, user.name, self._source(request), name)
        return RedirectResponse("/templates", status_code=303)

    async def approvals_page(self, request: Request, user: User, error: str = "") -> Response:
        """GET /approvals: launches awaiting approval (approve or reject those this user may
        decide), then the last decided ones."""
        await approvals.expire_approvals(self.services, self.services.approval_hook)
        store = self.services.store
        defs: dict[str, TemplateDefinition] = {
            r.name: templates.definition_of(r) for r in await store.call(store.list_templates)
        }
        rows = []
        reader = await Reader.of(self.services, user)
        for a in await store.call(store.list_approvals, None, 100):
            if not reader.sees_approval(a):
                continue  # a user with a scope sees their own requests only
            entry = approvals.approval_dict(a)
            definition = defs.get(a.template)
            entry["may_decide"] = approvals.may_decide(user, a, definition)
            entry["own"] = user.name == a.requested_by
            rows.append(entry)
        waiting = [r for r in rows if r["state"] == RunState.AWAITING_APPROVAL]
        decided = [r for r in rows if r["state"] != RunState.AWAITING_APPROVAL][:30]
        return self.console.render(
            request,
            user,
            "approvals.html",
            status=400 if error else 200,
            section="approvals",
            waiting=waiting,
            decided=decided,
            error=error,
        )

    async def decide(self, request: Request, user: User) -> Response:
        """POST /approvals/{job_id}/approve|reject: the decision, with the form's comment."""
        action = request.path_params["action"]
        if action not in ("approve", "reject"):
            raise PageError("unknown action", status=404)
        try:
            job_id = int(request.path_params["job_id"])
        except ValueError as exc:
            raise PageError("not a job id", status=404) from exc
        form = await self.console.form(request)
        decide = approvals.approve if action == "approve" else approvals.reject
        try:
            row = await decide(
                self.services,
                user,
                self._source(request),
                job_id,
                form.get("comment", ""),
                self.services.approval_hook,
            )
        except APIError as exc:
            return await self.approvals_page(request, user, f"job {job_id}: {exc}")
        target = row.launched_job if row.launched_job else job_id
        return RedirectResponse(f"/jobs/{target}", status_code=303)

    def routes(self) -> list[Route]:
        """The template and approval pages."""
        page = self.console.page
        return [
            Route("/templates", page(self.list_page), methods=["GET"]),
            Route("/templates", page(self.create, ADMIN), methods=["POST"]),
            Route("/templates/{name}", page(self.template_page), methods=["GET"]),
            Route("/templates/{name}", page(self.replace, ADMIN), methods=["POST"]),
            Route("/templates/{name}/launch", page(self.launch), methods=["POST"]),
            Route("/templates/{name}/delete", page(self.delete, ADMIN), methods=["POST"]),
            Route("/approvals", page(self.approvals_page), methods=["GET"]),
            Route("/approvals/{job_id}/{action}", page(self.decide), methods=["POST"]),
        ]


def parse_definition(text: str) -> dict[str, Any]:
    """A definition typed in a form: YAML (JSON is YAML too)."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise APIError(f"the definition is not YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError("a template is a mapping (name:, command: or playbook:, params: ...)")
    return data


def _yaml(definition: TemplateDefinition) -> str:
    import yaml

    return str(yaml.safe_dump(json.loads(json.dumps(definition.as_dict())), sort_keys=False))
