"""The console's schedules: the Schedules page (those read from playbook files, read-only, beside
those stored in the database, each with its next fire times), a schedule's page, and the form
that makes or changes one (admins; each error shown by its field); pause, resume, run now and
delete buttons."""

from __future__ import annotations

from datetime import datetime
from pathlib import PurePath
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from easytask.errors import EasyTaskError
from easytask.service import schedules
from easytask.service.context import Services
from easytask.store.models import User
from easytask.web.console import Console
from easytask.web.errors import http_status

ADMIN = ("admin",)
OPERATE = ("admin", "operator")
FIELDS = (
    "name",
    "cron",
    "tz",
    "kind",
    "template",
    "params",
    "playbook",
    "vars",
    "command",
    "pattern",
    "limit",
    "catch_up",
    "enabled",
)


def _url(name: str) -> str:
    return f"/schedules/{quote(name, safe='')}"


def _shown(data: dict[str, Any]) -> dict[str, Any]:
    """A schedule for a page: its next fire times readable, in its own time zone."""
    out = dict(data)
    out["url"] = _url(data["name"])
    zone = ZoneInfo(data["tz"]) if data["next_fires"] else None
    out["fires"] = [
        datetime.fromisoformat(t).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
        for t in data["next_fires"]
    ]
    target = data.get("target") or {}
    kind = target.get("kind", "")
    if kind == "template":
        params = ", ".join(f"{k}={v}" for k, v in (target.get("params") or {}).items())
        out["what"] = f"template {target.get('template')}" + (f" ({params})" if params else "")
    elif kind == "playbook":
        out["what"] = f"playbook {target.get('playbook')}"
    elif kind == "adhoc":
        out["what"] = f"{target.get('pattern')}: {target.get('command')}"
    else:
        out["what"] = f"playbook file {PurePath(data.get('path') or '').name}"
    return out


def form_values(data: dict[str, Any]) -> dict[str, str]:
    """A stored schedule as the form's fields."""
    import yaml

    target = data.get("target") or {}
    params = target.get("params") or {}
    extra = target.get("vars") or {}
    return {
        "name": data["name"],
        "cron": data["cron"],
        "tz": data["tz"],
        "kind": target.get("kind", "template"),
        "template": target.get("template", ""),
        "params": yaml.safe_dump(params, sort_keys=False) if params else "",
        "playbook": target.get("playbook", ""),
        "vars": yaml.safe_dump(extra, sort_keys=False) if extra else "",
        "command": target.get("command", ""),
        "pattern": target.get("pattern", ""),
        "limit": target.get("limit", ""),
        "catch_up": data.get("catch_up", "none"),
        "enabled": "true" if data.get("enabled", True) else "",
    }


class FormError(EasyTaskError):
    """A form field that does not parse."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.problem = message


def spec_of(form: dict[str, str]) -> dict[str, Any]:
    """The API's body from the form's fields (params and vars typed as YAML mappings)."""
    import yaml

    spec: dict[str, Any] = {
        k: form.get(k, "").strip() for k in FIELDS if k not in ("params", "vars", "enabled")
    }
    spec["enabled"] = bool(form.get("enabled"))
    for key in ("params", "vars"):
        text = form.get(key, "")
        if not text.strip():
            spec[key] = {}
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise FormError(key, f"not YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(value, dict):
            raise FormError(key, "a mapping of NAME: VALUE lines")
        spec[key] = value
    return spec


class SchedulePages:
    """/schedules and /schedules/{name}."""

    def __init__(self, services: Services, console: Console) -> None:
        self.services = services
        self.console = console

    def _source(self, request: Request) -> str:
        return f"console {request.client.host if request.client else '?'}"

    async def _render(
        self,
        request: Request,
        user: User,
        template: str,
        status: int = 200,
        **context: Any,
    ) -> Response:
        store = self.services.store
        templates = [r.name for r in await store.call(store.list_templates)]
        return self.console.render(
            request,
            user,
            template,
            status=status,
            section="schedules",
            template_names=templates,
            may_operate=user.role in OPERATE,
            **context,
        )

    async def list_page(
        self,
        request: Request,
        user: User,
        status: int = 200,
        values: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        error: str = "",
    ) -> Response:
        """GET /schedules: every schedule with its next fire times; admins get the form."""
        store = self.services.store
        await self.services.scheduler.sync()
        rows = [_shown(schedules.schedule_view(r)) for r in await store.call(store.list_schedules)]
        return await self._render(
            request,
            user,
            "schedules.html",
            status,
            rows=rows,
            values=values or {"tz": "UTC", "kind": "template", "enabled": "true"},
            errors=errors or {},
            error=error,
            action="/schedules",
        )

    async def schedule_page(
        self,
        request: Request,
        user: User,
        status: int = 200,
        values: dict[str, str] | None = None,
        errors: dict[str, str] | None = None,
        error: str = "",
    ) -> Response:
        """GET /schedules/{name}: one schedule, its next fire times and (admins) its form."""
        name = request.path_params["name"]
        data = schedules.schedule_view(await schedules.get_schedule(self.services, name))
        return await self._render(
            request,
            user,
            "schedule.html",
            status,
            sc=_shown(data),
            values=values or form_values(data),
            errors=errors or {},
            error=error,
            action=_url(name),
        )

    async def _save(self, request: Request, user: User, name: str | None) -> Response:
        form = await self.console.form(request)
        values = {k: form.get(k, "") for k in FIELDS}
        page = self.list_page if name is None else self.schedule_page
        try:
            spec = spec_of(form)
            source = self._source(request)
            if name is None:
                row = await schedules.create_schedule(self.services, user, source, spec)
            else:
                row = await schedules.update_schedule(self.services, user, source, name, spec)
        except (schedules.ScheduleInvalid, FormError) as exc:
            field = exc.field.split(".")[0]
            return await page(
                request, user, 400, values, {field: exc.problem}, "fix the fields marked"
            )
        except EasyTaskError as exc:
            return await page(request, user, http_status(exc), values, {}, str(exc))
        return RedirectResponse(_url(row.name), status_code=303)

    async def create(self, request: Request, user: User) -> Response:
        """POST /schedules (admin): a new stored schedule from the form."""
        return await self._save(request, user, None)

    async def update(self, request: Request, user: User) -> Response:
        """POST /schedules/{name} (admin): change a stored schedule."""
        return await self._save(request, user, request.path_params["name"])

    async def action(self, request: Request, user: User) -> Response:
        """POST /schedules/{name}/pause|resume|run|delete."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        source = self._source(request)
        try:
            if action in ("pause", "resume"):
                await schedules.set_enabled(self.services, user, source, name, action == "resume")
            elif action == "run":
                job_id = await schedules.run_now(self.services, user, source, name)
                return RedirectResponse(f"/jobs/{job_id}", status_code=303)
            elif action == "delete" and user.role == "admin":
                await schedules.delete_schedule(self.services, user, source, name)
                return RedirectResponse("/schedules", status_code=303)
            else:
                return await self.schedule_page(
                    request, user, 404, error=f"unknown action {action!r}"
                )
        except EasyTaskError as exc:
            return await self.schedule_page(request, user, http_status(exc), error=str(exc))
        return RedirectResponse(_url(name), status_code=303)

    def routes(self) -> list[Route]:
        """The schedule pages."""
        page = self.console.page
        return [
            Route("/schedules", page(self.list_page), methods=["GET"]),
            Route("/schedules", page(self.create, ADMIN), methods=["POST"]),
            Route("/schedules/{name}", page(self.schedule_page), methods=["GET"]),
            Route("/schedules/{name}", page(self.update, ADMIN), methods=["POST"]),
            Route("/schedules/{name}/{action}", page(self.action, OPERATE), methods=["POST"]),
        ]
