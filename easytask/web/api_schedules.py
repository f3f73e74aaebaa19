"""The API of schedules: those read from playbook files and those stored in the database."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.service import schedules
from easytask.service.context import Services
from easytask.store.models import User
from easytask.web.requests import ROLES_OPERATE, ApiRequests, body, source

ADMIN = ("admin",)


class SchedulesApi:
    """/api/schedules."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def list_all(self, request: Request, user: User) -> Response:
        """GET /api/schedules: every schedule, from files and stored, with its next fire times."""
        store = self.services.store
        await self.services.scheduler.sync()
        rows = await store.call(store.list_schedules)
        return JSONResponse({"schedules": [schedules.schedule_view(r) for r in rows]})

    async def create(self, request: Request, user: User) -> Response:
        """POST /api/schedules: store a new schedule (admin)."""
        data = await body(request)
        row = await schedules.create_schedule(self.services, user, source(request), data)
        return JSONResponse(schedules.schedule_view(row), status_code=201)

    async def get(self, request: Request, user: User) -> Response:
        """GET /api/schedules/{name}: one schedule with its next fire times."""
        row = await schedules.get_schedule(self.services, request.path_params["name"])
        return JSONResponse(schedules.schedule_view(row))

    async def update(self, request: Request, user: User) -> Response:
        """PUT /api/schedules/{name}: replace a stored schedule (admin)."""
        data = await body(request)
        name = request.path_params["name"]
        row = await schedules.update_schedule(self.services, user, source(request), name, data)
        return JSONResponse(schedules.schedule_view(row))

    async def delete(self, request: Request, user: User) -> Response:
        """DELETE /api/schedules/{name}: delete a stored schedule (admin)."""
        name = request.path_params["name"]
        await schedules.delete_schedule(self.services, user, source(request), name)
        return JSONResponse({"deleted": name})

    async def pause(self, request: Request, user: User) -> Response:
        """POST /api/schedules/{name}/pause: stop a schedule firing until it is resumed."""
        return await self._switch(request, user, False)

    async def resume(self, request: Request, user: User) -> Response:
        """POST /api/schedules/{name}/resume: let a paused schedule fire again."""
        return await self._switch(request, user, True)

    async def disable(self, request: Request, user: User) -> Response:
        """POST /api/schedules/{name}/disable: the same as pause."""
        return await self._switch(request, user, False)

    async def enable(self, request: Request, user: User) -> Response:
        """POST /api/schedules/{name}/enable: the same as resume."""
        return await self._switch(request, user, True)

    async def _switch(self, request: Request, user: User, enabled: bool) -> Response:
        name = request.path_params["name"]
        row = await schedules.set_enabled(self.services, user, source(request), name, enabled)
        return JSONResponse(schedules.schedule_view(row))

    async def run(self, request: Request, user: User) -> Response:
        """POST /api/schedules/{name}/run: start a schedule now, out of its timetable."""
        name = request.path_params["name"]
        job_id = await schedules.run_now(self.services, user, source(request), name)
        return JSONResponse({"schedule": name, "job": job_id}, status_code=201)

    def routes(self) -> list[Route]:
        """The schedule routes."""
        route = self.api.route
        op = ROLES_OPERATE
        one = "/api/schedules/{name}"
        return [
            Route("/api/schedules", route(self.list_all), methods=["GET"]),
            Route("/api/schedules", route(self.create, ADMIN), methods=["POST"]),
            Route(one, route(self.get), methods=["GET"]),
            Route(one, route(self.update, ADMIN), methods=["PUT"]),
            Route(one, route(self.delete, ADMIN), methods=["DELETE"]),
            Route(f"{one}/pause", route(self.pause, op), methods=["POST"]),
            Route(f"{one}/resume", route(self.resume, op), methods=["POST"]),
            Route(f"{one}/disable", route(self.disable, op), methods=["POST"]),
            Route(f"{one}/enable", route(self.enable, op), methods=["POST"]),
            Route(f"{one}/run", route(self.run, op), methods=["POST"]),
        ]
