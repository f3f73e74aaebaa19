"""The web console: server-rendered pages (Jinja2, autoescaped) behind a session sign-in."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from easytask import __version__
from easytask.errors import APIError, EasyTaskError, RateLimited
from easytask.loglines import LEVELS
from easytask.store import outage
from easytask.store.models import RunState, User
from easytask.web.auth import CSRF_FIELD, SAFE_METHODS, SessionAuth, csrf_ok
from easytask.web.errors import INTERNAL, PageError, http_status, retry_headers
from easytask.web.format import fmt_duration, fmt_time
from easytask.web.requests import ROLES_OPERATE, no_nul, read_capped

log = logging.getLogger("easytask.server")

MAX_FORM = 64 * 1024
PageHandler = Callable[[Request, User], Awaitable[Response]]


def safe_next(value: str | None) -> str:
    """A redirect target inside this site only (no `//host`, no scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def web_dir() -> Path:
    """Templates and static files: `easytask/_web` in a wheel, `<repo>/web` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_web", package.parent / "web"):
        if (candidate / "templates").is_dir():
            return candidate
    raise EasyTaskError(
        f"console files not found in {package / '_web'} or {package.parent / 'web'}"
    )


class Console:
    """The console's plumbing and sign-in: templates, forms, the page wrapper, login, logout."""

    def __init__(self, auth: SessionAuth, root: Path) -> None:
        self.auth = auth
        self.root = root
        self.env = Environment(
            loader=FileSystemLoader(root / "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        stamp = max(
            (p.stat().st_mtime for p in (root / "static").rglob("*") if p.is_file()), default=0.0
        )
        self._static_tag = f"{__version__}-{int(stamp)}"
        self.env.globals.update(
            static=self.static_url,
            version=__version__,
            levels=LEVELS,
            states=RunState.ALL,
            final_states=RunState.FINAL,
        )
        self.env.filters.update(time=fmt_time, duration=fmt_duration)

    def static_url(self, path: str) -> str:
        """The URL of a static file, tagged so a new release is not served from cache."""
        return f"/static/{path}?v={self._static_tag}"

    # -- plumbing ---------------------------------------------------------------------------

    def render(
        self, request: Request, user: User | None, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """A page from a template, with the user, CSRF token and current section."""
        session = self.auth.read(request)
        html = self.env.get_template(template).render(
            request=request,
            user=user,
            csrf=session.csrf if session else "",
            can_operate=user is not None and user.role in ROLES_OPERATE,
            is_admin=user is not None and user.role == "admin",
            **context,
        )
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    async def form(self, request: Request) -> dict[str, str]:
        """The url-encoded form of a POST (cached on the request), size-limited."""
        cached = request.scope.get("easytask.form")
        if cached is not None:
            return cached
        raw = await read_capped(request, MAX_FORM)
        if raw is None:
            raise PageError("form too large", status=413)
        data: dict[str, str] = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            data = dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))
        bad = next((name for name, value in data.items() if "\x00" in name + value), None)
        if bad is not None:
            raise PageError(f"a NUL character is not allowed in a form field ({bad!r})")
        request.scope["easytask.form"] = data
        return data

    def page(
        self, handler: PageHandler, roles: tuple[str, ...] | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page: sign-in (else redirect to /login), CSRF on POST, role check, errors."""

        async def wrapped(request: Request) -> Response:
            user: User | None = None
            outage.mark_impatient()  # a database outage answers 503, it is not waited out
            try:
                no_nul(request)
                user = await self.auth.user(request)
                if user is None:
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    if request.method not in SAFE_METHODS:
                        target = "/"
                    return RedirectResponse(
                        "/login?" + urlencode({"next": target}), status_code=303
                    )
                if request.method not in SAFE_METHODS:
                    form = await self.form(request)
                    if not csrf_ok(self.auth.read(request), form.get(CSRF_FIELD)):
                        raise PageError(
                            "the form's CSRF token is missing or invalid; reload the page and try again",
                            status=403,
                        )
                if roles is not None and user.role not in roles:
                    raise PageError(f"role {user.role!r} may not do this", status=403)
                return await handler(request, user)
            except EasyTaskError as exc:
                page = self.render(
                    request, user, "error.html", status=http_status(exc), message=str(exc)
                )
                page.headers.update(retry_headers(exc))
                return page
            except Exception:
                log.exception("console error on %s %s", request.method, request.url.path)
                return self.render(request, user, "error.html", status=500, message=INTERNAL)

        return wrapped

    @staticmethod
    def int_param(request: Request, name: str) -> int:
        """A path parameter as an int (404 otherwise)."""
        try:
            return int(request.path_params[name])
        except (KeyError, ValueError) as exc:
            raise PageError("not found", status=404) from exc

    # -- sign-in ----------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        """GET /login: the sign-in form (starts an anonymous session for its CSRF token)."""
        target = safe_next(request.query_params.get("next"))
        if await self.auth.user(request) is not None:
            return RedirectResponse(target, status_code=303)
        return self._login_form(request, target, "", 200)

    def _login_form(
        self, request: Request, target: str, error: str, status: int, name: str = ""
    ) -> Response:
        session = self.auth.read(request)
        fresh = session is None or session.uid is not None
        if fresh:
            session = self.auth.anonymous()
            request.scope["easytask.session"] = session
        response = self.render(
            request, None, "login.html", status=status, next=target, error=error, name=name
        )
        if fresh:
            assert session is not None
            self.auth.set_cookie(response, request, session)
        return response

    async def login(self, request: Request) -> Response:
        """POST /login: check the password; a new session (id and CSRF token) on success."""
        try:
            form = await self.form(request)
        except PageError as exc:
            return self._login_form(request, "/", str(exc), exc.status)
        target = safe_next(form.get("next"))
        name = form.get("username", "").strip()
        session = self.auth.read(request)
        if not csrf_ok(session, form.get(CSRF_FIELD)):
            request.scope["easytask.session"] = None
            return self._login_form(
                request, target, "The form expired; please sign in again.", 403, name
            )
        address = request.client.host if request.client else "?"
        try:
            user = await self.auth.checked_login(
                name, form.get("password", ""), address, f"console {address}"
            )
        except RateLimited as exc:
            log.warning("console sign-in blocked for %r from %s", name, address)
            response = self._login_form(request, target, f"{exc}.", 429, name)
            response.headers["retry-after"] = str(exc.retry_after)
            return response
        except APIError:
            log.warning("console sign-in refused for %r from %s", name, address)
            return self._login_form(request, target, "Wrong user name or password.", 401, name)
        assert session is not None
        await self.auth.revoke(session)
        response = RedirectResponse(target, status_code=303)
        self.auth.set_cookie(response, request, self.auth.signed_in(user))
        return response

    async def logout(self, request: Request, user: User) -> Response:
        """POST /logout: end the session."""
        session = self.auth.read(request)
        if session is not None:
            await self.auth.revoke(session)
        response = RedirectResponse("/login", status_code=303)
        self.auth.clear_cookie(response, request)
        return response

    def routes(self) -> list[Route]:
        """The sign-in routes (the pages are in console_pages)."""
        return [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", self.page(self.logout), methods=["POST"]),
        ]
