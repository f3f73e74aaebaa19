"""The API's request toolkit: bearer-token users, role checks, errors to JSON, bodies, params."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from easytask.errors import APIError, EasyTaskError
from easytask.service.context import Services
from easytask.store import outage
from easytask.store.models import User
from easytask.web.errors import INTERNAL, error_response, json_error

log = logging.getLogger("easytask.server")

MAX_BODY = 1 << 20
MAX_ID = 2**63 - 1  # ids are 64-bit integers in the database
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
    """The JSON body, size-limited and checked to be an object of text the store can keep."""
    raw = await read_capped(request, limit)
    if raw is None:
        raise APIError("request body too large", status=413)
    try:
        data = json.loads(raw or b"{}", parse_constant=_no_constant, parse_float=_finite)
        if not isinstance(data, dict):
            raise APIError("body must be a JSON object")
        bad_text(data, "body")
    except ValueError as exc:
        raise APIError(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:
        raise APIError("body is nested too deeply") from exc
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:20]} is too large a number")
    return value


def bad_text(value: Any, where: str) -> None:
    """Refuse (400) a NUL character or a lone surrogate in any text inside `value` (keys too):
    the database cannot keep either, and a NUL would cut a text short."""
    if isinstance(value, str):
        if "\x00" in value:
            raise APIError(f"{where}: a NUL character is not allowed")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise APIError(f"{where}: text is not valid Unicode (a lone surrogate)") from exc
    elif isinstance(value, dict):
        for key, item in value.items():
            bad_text(key, where)
            bad_text(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            bad_text(item, f"{where}[{index}]")


def no_nul(request: Request) -> None:
    """Refuse a NUL character in the path or a query parameter: the database would cut the text
    there, and a filter cut to nothing matches everything."""
    if "\x00" in request.scope.get("path", ""):
        raise APIError("a NUL character is not allowed in the URL")
    if any("\x00" in value for _, value in request.query_params.multi_items()):
        raise APIError("a NUL character is not allowed in a query parameter")


def id_number(value: str, name: str) -> int:
    """A database id from text: a number from 1 to 2**63 - 1 (ValueError otherwise)."""
    number = int(value)
    if not 0 < number <= MAX_ID:
        raise ValueError(f"{name} {value!r} is out of range")
    return number


def positive(value: str, name: str) -> int:
    """A count such as a page size from text: a whole number of at least 1 (ValueError)."""
    number = int(value)
    if number < 1:
        raise ValueError(f"{name} must be at least 1, not {number}")
    return number


def int_param(request: Request, name: str) -> int:
    """A path parameter as a database id (404 otherwise)."""
    try:
        return id_number(request.path_params[name], name)
    except (KeyError, ValueError) as exc:
        raise APIError(f"{name} must be a number from 1 to {MAX_ID}", status=404) from exc


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

        @functools.wraps(handler)
        async def wrapped(request: Request) -> Response:
            outage.mark_impatient()  # a database outage answers 503, it is not waited out
            try:
                no_nul(request)
                user = await self.user(request)
                if roles is not None and user.role not in roles:
                    raise APIError(f"role {user.role!r} may not do this", status=403)
                return await handler(request, user)
            except EasyTaskError as exc:
                return error_response(exc)
            except HTTPException:
                raise
            except Exception:
                log.exception("API error on %s %s", request.method, request.url.path)
                return json_error(500, INTERNAL)

        wrapped.roles = roles  # type: ignore[attr-defined]  # for the OpenAPI document
        return wrapped
