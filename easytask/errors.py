"""The one exception tree of EasyTask; each class docstring is its default user message."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SourceLocation:
    """A position in a user's file: 1-based line and column."""

    path: str
    line: int | None = None
    col: int | None = None

    def __str__(self) -> str:
        out = self.path
        if self.line is not None:
            out += f":{self.line}"
            if self.col is not None:
                out += f":{self.col}"
        return out

    def source_line(self) -> str | None:
        """Return the offending line of the file, if it can be read."""
        if self.line is None:
            return None
        try:
            lines = Path(self.path).read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return None
        if 1 <= self.line <= len(lines):
            return lines[self.line - 1]
        return None


class EasyTaskError(Exception):
    """EasyTask failed."""

    exit_code = 1

    def __init__(self, message: str | None = None, *, location: SourceLocation | None = None):
        self.message = message or (self.__doc__ or "").strip()
        self.location = location
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.location is not None:
            return f"{self.location}: {self.message}"
        return self.message

    def render(self) -> str:
        """The message as a compiler prints it: location, message, then the offending line."""
        text = str(self)
        if self.location is not None:
            line = self.location.source_line()
            if line is not None:
                text += f"\n    {line}"
                if self.location.col is not None:
                    text += "\n    " + " " * (self.location.col - 1) + "^"
        return text


class UsageError(EasyTaskError):
    """The command line is not valid."""

    exit_code = 2


class ConfigError(EasyTaskError):
    """The configuration is not valid."""

    exit_code = 2


class InventoryError(EasyTaskError):
    """The inventory is not valid."""

    exit_code = 2


class PatternError(EasyTaskError):
    """The host pattern is not valid."""

    exit_code = 2


class NoHostsMatched(PatternError):
    """The host pattern matched no host."""


class PlaybookError(EasyTaskError):
    """The playbook is not valid."""

    exit_code = 2


class TemplateError(EasyTaskError):
    """A template could not be rendered."""

    exit_code = 2


class ConnectError(EasyTaskError):
    """Could not connect to the host."""


class StartError(EasyTaskError):
    """EasyTask could not start."""

    exit_code = 3


class APIError(EasyTaskError):
    """The server refused the request."""

    def __init__(self, message: str | None = None, *, status: int = 400):
        super().__init__(message)
        self.status = status
        self.exit_code = 2 if status in (400, 404, 409, 422) else 3 if status >= 500 else 2


class AuthError(APIError):
    """Not authorized."""

    def __init__(self, message: str | None = None, *, status: int = 401):
        super().__init__(message, status=status)


class RateLimited(APIError):
    """Too many failed sign-ins; try again later."""

    def __init__(self, retry_after: int, message: str | None = None):
        super().__init__(
            message or f"too many failed sign-ins; try again in {retry_after} s", status=429
        )
        self.retry_after = retry_after


class Unavailable(APIError):
    """The database is unavailable; try again later."""

    def __init__(self, message: str | None = None, *, retry_after: int = 5):
        super().__init__(message, status=503)
        self.retry_after = retry_after


class Conflict(APIError):
    """The request conflicts with the current state."""

    def __init__(self, message: str | None = None):
        super().__init__(message, status=409)


class NotFound(APIError):
    """Not found."""

    def __init__(self, message: str | None = None):
        super().__init__(message, status=404)
