"""API of the credential store (admin only): set, list, remove, rotate the key. No route
ever answers with a value, sealed or not."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.service import credentials
from easytask.service.context import Services
from easytask.store.models import User
from easytask.store.serialize import credential_dict
from easytask.web.requests import ApiRequests, body, source

ADMIN = ("admin",)


class CredentialsApi:
    """/api/credentials."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def list_all(self, request: Request, user: User) -> Response:
        """GET /api/credentials: names, kinds, scopes, who and when; never values."""
        store = self.services.store
        rows = await store.call(store.list_credentials)
        return JSONResponse(
            {
                "credentials": [credential_dict(r) for r in rows],
                "key_id": self.services.keyring.key_id,
            }
        )

    async def put(self, request: Request, user: User) -> Response:
        """POST /api/credentials: {name, kind, value, scope}; creates or replaces one."""
        data = await body(request, limit=256 * 1024)
        row, created = await credentials.set_credential(
            self.services, user.name, source(request), data
        )
        return JSONResponse(
            {**credential_dict(row), "created": created}, status_code=201 if created else 200
        )

    async def remove(self, request: Request, user: User) -> Response:
        """POST /api/credentials/{name}/remove."""
        name = request.path_params["name"]
        await credentials.remove_credential(self.services, user.name, source(request), name)
        return JSONResponse({"name": name, "removed": True})

    async def rotate_key(self, request: Request, user: User) -> Response:
        """POST /api/credentials/rotate-key: every value sealed again under a new key."""
        result = await credentials.rotate_key(self.services, user.name, source(request))
        return JSONResponse(result)

    def routes(self) -> list[Route]:
        """The credential routes, every one for admins only."""
        route = self.api.route
        return [
            Route("/api/credentials", route(self.list_all, ADMIN), methods=["GET"]),
            Route("/api/credentials", route(self.put, ADMIN), methods=["POST"]),
            Route("/api/credentials/rotate-key", route(self.rotate_key, ADMIN), methods=["POST"]),
            Route("/api/credentials/{name}/remove", route(self.remove, ADMIN), methods=["POST"]),
        ]
