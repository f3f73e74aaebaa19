"""The whole web application: JSON API, console pages, static files and security headers."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from easytask.service.context import Services
from easytask.statefiles import load_or_create_secret
from easytask.web.api_admin import AdminApi
from easytask.web.api_agents import AgentsApi
from easytask.web.api_credentials import CredentialsApi
from easytask.web.api_jobs import JobsApi
from easytask.web.api_playbooks import PlaybooksApi
from easytask.web.api_schedules import SchedulesApi
from easytask.web.api_templates import TemplatesApi
from easytask.web.api_timeline import TimelineApi
from easytask.web.auth import SessionAuth, ensure_admin_password
from easytask.web.console import Console, web_dir
from easytask.web.console_admin import AdminPages
from easytask.web.console_hosts import HostPages
from easytask.web.console_pages import ConsolePages
from easytask.web.console_schedules import SchedulePages
from easytask.web.console_templates import TemplatePages
from easytask.web.export import ExportApi
from easytask.web.openapi import OpenApi
from easytask.web.ops import OpsApi
from easytask.web.requests import ApiRequests
from easytask.web.runlog import RunLogApi
from easytask.web.users import UsersApi

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


def routes(services: Services, auth: SessionAuth) -> list[BaseRoute]:
    """Every route of the application, API first."""
    api = ApiRequests(services)
    api.session_user = auth.api_user
    root = web_dir()
    console = Console(auth, root)
    runlog = RunLogApi(services, api)
    listed: list[BaseRoute] = [
        *OpsApi(services, api).routes(),
        *AdminApi(services, api).routes(),
        *JobsApi(services, api).routes(),
        *AgentsApi(services, api).routes(),
        *PlaybooksApi(services, api).routes(),
        *SchedulesApi(services, api).routes(),
        *runlog.routes(),
        *TimelineApi(services, api, runlog.run_for).routes(),
        *UsersApi(services, api, auth).routes(),
        *CredentialsApi(services, api).routes(),
        *TemplatesApi(services, api).routes(),
        *ExportApi(services, api).routes(),
        *console.routes(),
        *ConsolePages(services, console).routes(),
        *TemplatePages(services, console).routes(),
        *SchedulePages(services, console).routes(),
        *HostPages(services, console).routes(),
        *AdminPages(services, console, api).routes(),
        Mount("/static", StaticFiles(directory=root / "static"), name="static"),
    ]
    listed[0:0] = OpenApi(api, listed).routes()  # the document lists itself too
    return listed


async def create_web_app(services: Services) -> Starlette:
    """The application for a server: loads the session key, sets the first admin password."""
    secret = load_or_create_secret(services.state_dir / "session.key")
    await ensure_admin_password(services.store, services.state_dir)
    auth = SessionAuth(services.store, secret)
    return Starlette(routes=routes(services, auth), middleware=[Middleware(SecurityHeaders)])
