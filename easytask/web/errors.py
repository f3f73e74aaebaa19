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


def retry_headers(exc: BaseException) -> dict[str, str]:
    """`Retry-After` for an error that says when to ask again (the database away: 503)."""
    retry_after = getattr(exc, "retry_after", None)
    return {"retry-after": str(retry_after)} if retry_after is not None else {}


def error_response(exc: EasyTaskError) -> JSONResponse:
    """The API's answer to an EasyTask error: its status, message and `Retry-After` if any."""
    response = json_error(http_status(exc), str(exc))
    response.headers.update(retry_headers(exc))
    return response
