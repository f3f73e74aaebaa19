"""API for console accounts: list and create users (admin only)."""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.errors import APIError
from easytask.store.models import User
from easytask.web.auth import ROLES, hash_password

if TYPE_CHECKING:
    from easytask.server import Server
    from easytask.web.api import Api

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
MIN_PASSWORD = 8


def user_json(user: User) -> dict[str, object]:
    """A user as the API returns it (never the hash)."""
    return {
        "name": user.name,
        "role": user.role,
        "disabled": user.disabled,
        "created_at": user.created_at.isoformat() if user.created_at else None,
    }


class UsersApi:
    """GET/POST /api/users."""

    def __init__(self, server: Server, api: Api) -> None:
        self.server = server
        self.api = api

    async def list_users(self, request: Request, user: User) -> Response:
        """GET /api/users: every user with role and state."""
        store = self.server.store
        return JSONResponse({"users": [user_json(u) for u in await store.call(store.list_users)]})

    async def create(self, request: Request, user: User) -> Response:
        """POST /api/users: {name, role, password}."""
        data = await self.api.body(request)
        name = str(data.get("name") or "").strip()
        role = str(data.get("role") or "viewer")
        password = data.get("password")
        if not NAME_RE.match(name):
            raise APIError(
                "name must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)"
            )
        if role not in ROLES:
            raise APIError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        if not isinstance(password, str) or len(password) < MIN_PASSWORD:
            raise APIError(f"password must be a string of at least {MIN_PASSWORD} characters")
        password_hash = await asyncio.to_thread(hash_password, password)
        store = self.server.store
        created = await store.call(store.create_user, name, role, password_hash)
        if created is None:
            raise APIError(f"user {name!r} exists", status=409)
        await self.api.audit(user, "user.create", request, {"user": name, "role": role})
        return JSONResponse(user_json(created), status_code=201)

    def routes(self) -> list[Route]:
        """The user routes (admin only)."""
        admin = ("admin",)
        return [
            Route("/api/users", self.api.route(self.list_users, admin), methods=["GET"]),
            Route("/api/users", self.api.route(self.create, admin), methods=["POST"]),
        ]
