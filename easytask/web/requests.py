"""The API's request toolkit: bearer-token users, role checks, errors to JSON, bodies, params."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from easytask.errors import APIError, EasyTaskError
from easytask.service.context import Services
from easytask.store.models import User
from easytask.web.errors import INTERNAL, http_status, json_error

log = logging.getLogger("easytask.server")

MAX_BODY = 1 << 20
CLIENT_KIND = re.compile(r"[A-Za-z0-9._:/+-]{1,32}")
ROLES_OPERATE = ("admin", "operator")
Handler = Callable[[Request], Awaitable[Response]]
UserHandler = Callable[[Request, User], Awaitable[Response]]


async def read_capped(request: Request, limit: int) -> bytes | None:
    """The raw request body, read into one buffer; None as soon as it passes `limit` bytes."""
    raw = bytearray()
    async for chunk in request.stream():
        if len(raw) + len(chunk) > limit:
            return None
        raw += chunk
    return bytes(raw)


async def body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The JSON body, size-limited and checked to be an object."""
    raw = await read_capped(request, limit)
    if raw is None:
        raise APIError("request body too large", status=413)
    try:
        data = json.loads(raw or b"{}")
    except ValueError as exc:
        raise APIError(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise APIError("body must be a JSON object")
    return data


def no_nul(request: Request) -> None:
    """Refuse query parameters holding NUL: the database would cut the text there, and a
    filter cut to nothing matches everything."""
    if any("\x00" in value for _, value in request.query_params.multi_items()):
        raise APIError("a NUL character is not allowed in a query parameter")


def int_param(request: Request, name: str) -> int:
    """A path parameter as an int."""
    try:
        return int(request.path_params[name])
    except (KeyError, ValueError) as exc:
        raise APIError(f"{name} must be a number", status=404) from exc


def source(request: Request) -> str:
    """Where a request came from: client kind and address.

    The kind is the `X-EasyTask-Client` header when it is a short name (letters, digits and
    `._:/+-`, at most 32); any other value is ignored and the request counts as "api".
    """
    kind = request.headers.get("x-easytask-client", "")
    if not CLIENT_KIND.fullmatch(kind):
        kind = "api"
    addr = request.client.host if request.client else "?"
    return f"{kind} {addr}"


class ApiRequests:
    """Authentication and error mapping for the API routes of one server."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._token_cache: dict[str, tuple[float, User | None]] = {}
        # Set by the console: the signed-in user of a browser request without a bearer token.
        self.session_user: Callable[[Request], Awaitable[User | None]] | None = None

    async def user(self, request: Request) -> User:
        """The user behind the request's bearer token; 401 without a valid one."""
        header = request.headers.get("authorization", "")
        if not header and self.session_user is not None:
            session_user = await self.session_user(request)
            if session_user is not None:
                return session_user
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError("authentication required: pass a bearer token", status=401)
        now = time.monotonic()
        cached = self._token_cache.get(token)
        if cached is None or now - cached[0] > 10:
            store = self.services.store
            user = await store.call(store.user_for_token, token.strip())
            self._token_cache[token] = (now, user)
            if len(self._token_cache) > 10000:
                self._token_cache.clear()
        else:
            user = cached[1]
        if user is None:
            raise APIError("invalid, expired or revoked token", status=401)
        return user

    def forget_tokens(self) -> None:
        """Drop cached token lookups so a revoked token or a changed user applies at once."""
        self._token_cache.clear()

    def route(self, handler: UserHandler, roles: tuple[str, ...] | None = None) -> Handler:
        """Wrap a handler with authentication, an optional role check and error mapping."""

        async def wrapped(request: Request) -> Response:
            try:
                user = await self.user(request)
                if roles is not None and user.role not in roles:
                    raise APIError(f"role {user.role!r} may not do this", status=403)
                return await handler(request, user)
            except EasyTaskError as exc:
                return json_error(http_status(exc), str(exc))
            except HTTPException:
                raise
            except Exception:
                log.exception("API error on %s %s", request.method, request.url.path)
                return json_error(500, INTERNAL)

        return wrapped
