"""The whole web application: JSON API, console pages, static files and security headers."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easytask.web.api import Api
from easytask.web.auth import SessionAuth, ensure_admin_password, load_or_create_secret
from easytask.web.console import Console, web_dir
from easytask.web.export import ExportApi
from easytask.web.ops import OpsApi
from easytask.web.runlog import RunLogApi
from easytask.web.users import UsersApi

if TYPE_CHECKING:
    from easytask.server import Server

# Scripts and styles come only from /static: untrusted text can never run as code.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


class SecurityHeaders:
    """Adds CSP, nosniff, frame and referrer headers to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def routes(server: Server, auth: SessionAuth) -> list[BaseRoute]:
    """Every route of the application, API first."""
    api = Api(server)
    api.session_user = auth.api_user
    root = web_dir()
    console = Console(server, auth, root)
    return [
        *OpsApi(server, api).routes(),
        *api.routes(),
        *RunLogApi(server, api).routes(),
        *UsersApi(server, api, auth).routes(),
        *ExportApi(server, api).routes(),
        *console.routes(),
        Mount("/static", StaticFiles(directory=root / "static"), name="static"),
    ]


async def create_web_app(server: Server) -> Starlette:
    """The application for a server: loads the session key, sets the first admin password."""
    secret = load_or_create_secret(server.state_dir / "session.key")
    await ensure_admin_password(server.store, server.state_dir)
    auth = SessionAuth(server.store, secret)
    return Starlette(routes=routes(server, auth), middleware=[Middleware(SecurityHeaders)])
