"""Errors to HTTP: the one mapping the API and the console share."""

from __future__ import annotations

from starlette.responses import JSONResponse

from easytask.errors import APIError, EasyTaskError

INTERNAL = "internal error; see the server log"


class PageError(APIError):
    """The page cannot be shown."""


def http_status(exc: EasyTaskError) -> int:
    """The HTTP status of an error: what a refusal says, 400 for any other EasyTask error."""
    return exc.status if isinstance(exc, APIError) else 400


def json_error(status: int, message: str) -> JSONResponse:
    """An API error response: `{"error": message}`."""
    return JSONResponse({"error": message}, status_code=status)
