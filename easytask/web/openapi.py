"""The API described as an OpenAPI 3 document, generated from the routes themselves.

Each operation comes from one route: its path, its method, the path parameters it takes and its
handler's docstring (the first line its summary, the rest its description), with the roles the
route lets in. Starlette's `BaseSchemaGenerator` walks the routes; the docstrings are prose, not
YAML, so the operations are built here. `tests/test_openapi.py` checks docs/api.md against it.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.schemas import BaseSchemaGenerator

from easytask import __version__
from easytask.store.models import User
from easytask.web.requests import ApiRequests

PATH = "/api/openapi.json"
OPS_PATHS = ("/healthz", "/readyz", "/metrics")  # outside /api, for machines all the same
INTEGER_PARAMS = {"job_id", "run_id", "token_id"}
PARAM = re.compile(r"{([^}:]+)}")
# "GET /api/jobs/{id}: the job and its runs." -> "the job and its runs."
LEAD = re.compile(r"^(?:GET|POST|PUT|PATCH|DELETE) \S+?: ")


def is_api_path(path: str) -> bool:
    """Whether a route belongs in the API document (the console's pages do not)."""
    return path.startswith("/api/") or path in OPS_PATHS


def operation(path: str, method: str, func: Any) -> dict[str, Any]:
    """One operation of the document, from a route's handler."""
    doc = inspect.getdoc(func) or ""
    first, _, rest = doc.partition("\n")
    summary = LEAD.sub("", first).strip()
    summary = summary[:1].upper() + summary[1:]
    roles = getattr(func, "roles", None)
    out: dict[str, Any] = {
        "operationId": f"{method}_{getattr(func, '__name__', 'handler')}",
        "summary": summary or f"{method.upper()} {path}",
        "parameters": [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "integer" if name in INTEGER_PARAMS else "string"},
            }
            for name in PARAM.findall(path)
        ],
        "responses": {"default": {"description": 'JSON; an error is {"error": message}'}},
        "x-roles": list(roles) if roles else "any signed-in user",
    }
    if rest.strip():
        out["description"] = rest.strip()
    if path in OPS_PATHS or path in ("/api/health", "/api/login"):
        out["x-roles"] = "see the description"
    return out


def document(routes: Sequence[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of the API routes among `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for info in BaseSchemaGenerator().get_endpoints(list(routes)):
        if is_api_path(info.path):
            paths.setdefault(info.path, {})[info.http_method] = operation(
                info.path, info.http_method, info.func
            )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "EasyTask API",
            "version": __version__,
            "description": "See docs/api.md. Send `Authorization: Bearer TOKEN` (or use a "
            "console session with its CSRF token).",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "paths": dict(sorted(paths.items())),
    }


class OpenApi:
    """GET /api/openapi.json over the application's routes (this one included)."""

    def __init__(self, api: ApiRequests, routes: Sequence[BaseRoute]) -> None:
        self.api = api
        self.listed = routes

    async def openapi(self, request: Request, user: User) -> Response:
        """GET /api/openapi.json: this API as an OpenAPI 3 document, made from its routes."""
        return JSONResponse(document(self.listed))

    def routes(self) -> list[Route]:
        """The document's route."""
        return [Route(PATH, self.api.route(self.openapi))]
