"""API for accounts and API tokens: users (admin), tokens (own or admin), sign-in for a token."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.durations import parse_duration
from easytask.errors import APIError, EasyTaskError, RateLimited
from easytask.service import users
from easytask.service.context import Services
from easytask.service.scope import check_scope_pattern
from easytask.store.models import User
from easytask.store.serialize import token_dict, user_dict
from easytask.web.auth import ROLES, SessionAuth, hash_password
from easytask.web.errors import http_status, json_error
from easytask.web.requests import ApiRequests, body, int_param, source

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
TOKEN_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,100}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
LOGIN_BODY = 8 * 1024
OWN_PASSWORD_KEYS = {"password", "current_password"}  # what a non-admin may send about itself


def checked_password(value: object) -> str:
    if not isinstance(value, str) or not MIN_PASSWORD <= len(value) <= MAX_PASSWORD:
        raise APIError(f"password must be a string of {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return value


def checked_ttl(value: object) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = parse_duration(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise APIError(f"ttl: {exc}") from exc
    if seconds <= 0:
        raise APIError("ttl must be positive")
    return seconds


def checked_token_name(value: object, default: str) -> str:
    name = str(value or default).strip()
    if not TOKEN_NAME_RE.match(name):
        raise APIError("token name must be 1-100 characters without control characters")
    return name


class UsersApi:
    """/api/users, /api/tokens and /api/login."""

    def __init__(self, services: Services, api: ApiRequests, auth: SessionAuth) -> None:
        self.services = services
        self.api = api
        self.auth = auth

    def _changed(self, user: User | None) -> None:
        """A user or token changed: cached sign-ins must look again."""
        self.api.forget_tokens()
        if user is not None:
            self.auth.forget_user(user.id)

    # -- users ------------------------------------------------------------------------------

    async def list_users(self, request: Request, user: User) -> Response:
        """GET /api/users: every user with role, scope and state."""
        store = self.services.store
        return JSONResponse({"users": [user_dict(u) for u in await store.call(store.list_users)]})

    async def create(self, request: Request, user: User) -> Response:
        """POST /api/users: {name, role, password, scope}."""
        data = await body(request)
        name = str(data.get("name") or "").strip()
        role = str(data.get("role") or "viewer")
        if not NAME_RE.match(name):
            raise APIError(
                "name must be 1-64 letters, digits or . _ @ - (starting with a letter or digit)"
            )
        if role not in ROLES:
            raise APIError(f"unknown role {role!r}; use one of {', '.join(ROLES)}")
        password = checked_password(data.get("password"))
        scope = check_scope_pattern(str(data.get("scope") or ""))
        password_hash = await asyncio.to_thread(hash_password, password)
        created = await users.create_user(
            self.services, user.name, source(request), name, role, password_hash, scope
        )
        return JSONResponse(user_dict(created), status_code=201)

    async def update(self, request: Request, user: User) -> Response:
        """POST /api/users/{name}: {role, scope, disabled, password}; a user may set their password."""
        name = request.path_params["name"]
        data = await body(request)
        if user.role != "admin" and (name != user.name or set(data) - OWN_PASSWORD_KEYS):
            raise APIError(f"role {user.role!r} may only change its own password", status=403)
        fields: dict[str, Any] = {}
        detail: dict[str, Any] = {"user": name}
        if "role" in data:
            if data["role"] not in ROLES:
                raise APIError(f"unknown role {data['role']!r}; use one of {', '.join(ROLES)}")
            fields["role"] = detail["role"] = data["role"]
        if "scope" in data:
            fields["scope"] = detail["scope"] = check_scope_pattern(str(data["scope"] or ""))
        if "disabled" in data:
            if not isinstance(data["disabled"], bool):
                raise APIError("disabled must be true or false")
            if data["disabled"] and name == user.name:
                raise APIError("you cannot disable your own account", status=409)
            fields["disabled"] = detail["disabled"] = data["disabled"]
        if "password" in data:
            password = checked_password(data["password"])
            if name == user.name:
                await self._check_current_password(request, user, data.get("current_password"))
            fields["password_hash"] = await asyncio.to_thread(hash_password, password)
            detail["password"] = "changed"
        if not fields:
            raise APIError("nothing to change: give role, scope, disabled or password")
        changed = await users.update_user(
            self.services, user.name, source(request), name, fields, detail
        )
        self._changed(changed)
        return JSONResponse(user_dict(changed))

    async def _check_current_password(self, request: Request, user: User, current: object) -> None:
        """Your own new password needs your current one: a token alone cannot set it. Checked as
        a sign-in is (rate-limited, audited)."""
        if not isinstance(current, str) or not current:
            raise APIError("changing your own password needs your current one (current_password)")
        address = request.client.host if request.client else "?"
        try:
            await self.auth.checked_login(user.name, current, address, source(request))
        except APIError as exc:  # a 429 (too many failures) stays one
            if exc.status != 401:
                raise
            raise APIError("the current password is wrong", status=403) from exc

    # -- tokens -----------------------------------------------------------------------------

    async def list_tokens(self, request: Request, user: User) -> Response:
        """GET /api/tokens: the caller's tokens; every token (or ?user=) for an admin."""
        store = self.services.store
        owner = request.query_params.get("user") or None
        if user.role != "admin":
            owner = user.name
        rows = await store.call(store.list_api_tokens, owner)
        return JSONResponse({"tokens": [token_dict(row, name) for row, name in rows]})

    async def create_token(self, request: Request, user: User) -> Response:
        """POST /api/tokens: {name, ttl, user}; only an admin makes tokens for someone else."""
        data = await body(request)
        owner = str(data.get("user") or user.name)
        if owner != user.name and user.role != "admin":
            raise APIError("only an admin may create tokens for another user", status=403)
        name = checked_token_name(data.get("name"), "cli")
        ttl = checked_ttl(data.get("ttl"))
        secret, row = await users.issue_token(
            self.services, user.name, source(request), owner, name, ttl
        )
        return JSONResponse({"token": secret, **token_dict(row, owner)}, status_code=201)

    async def revoke_token(self, request: Request, user: User) -> Response:
        """POST /api/tokens/{token_id}/revoke: the owner or an admin."""
        token_id = int_param(request, "token_id")
        row, owner = await users.revoke_token(self.services, user, source(request), token_id)
        self._changed(None)
        return JSONResponse(token_dict(row, owner))

    # -- sign-in for a token -----------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """POST /api/login: {name, password, token_name, ttl} -> a new API token (public, rate-limited)."""
        address = request.client.host if request.client else "?"
        try:
            data = await body(request, limit=LOGIN_BODY)
            name = str(data.get("name") or "").strip()
            password = data.get("password")
            if not name or not isinstance(password, str):
                raise APIError("name and password are required")
            token_name = checked_token_name(data.get("token_name"), f"login {address}")
            ttl = checked_ttl(data.get("ttl"))
            user = await self.auth.checked_login(name, password, address, source(request))
            secret, row = await users.issue_token(
                self.services, user.name, source(request), user.name, token_name, ttl, login=True
            )
        except RateLimited as exc:
            return JSONResponse(
                {"error": str(exc)},
                status_code=429,
                headers={"retry-after": str(exc.retry_after)},
            )
        except EasyTaskError as exc:
            return json_error(http_status(exc), str(exc))
        return JSONResponse(
            {"token": secret, "user": user.name, "role": user.role, **token_dict(row, user.name)},
            status_code=201,
        )

    def routes(self) -> list[Route]:
        """The account routes."""
        admin = ("admin",)
        route = self.api.route
        return [
            Route("/api/login", self.login, methods=["POST"]),
            Route("/api/users", route(self.list_users, admin), methods=["GET"]),
            Route("/api/users", route(self.create, admin), methods=["POST"]),
            Route("/api/users/{name}", route(self.update), methods=["POST"]),
            Route("/api/tokens", route(self.list_tokens), methods=["GET"]),
            Route("/api/tokens", route(self.create_token), methods=["POST"]),
            Route("/api/tokens/{token_id}/revoke", route(self.revoke_token), methods=["POST"]),
        ]
