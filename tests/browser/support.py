"""Signing in to the console over plain HTTP (httpx), shared by the console and browser tests."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import httpx

from tests.support import ServerHandle

META_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]*)">')
FIELD_CSRF = re.compile(r'name="csrf" value="([^"]*)"')
COOKIE = "easytask_session"


def admin_password(server: ServerHandle) -> str:
    """The first admin password the server wrote to its state dir."""
    return (server.state_dir / "admin.password").read_text().strip()


def add_user(server: ServerHandle, name: str, role: str, password: str) -> dict[str, Any]:
    """Create a console user through the admin-only API (with the admin's bearer token)."""
    return dict(server.post("/api/users", {"name": name, "role": role, "password": password}))


def session_payload(cookie: str) -> dict[str, Any]:
    """The (signed, not secret) JSON inside a session cookie: sid, CSRF token, user id."""
    part = cookie.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


class Browserless:
    """A cookie-keeping HTTP client that signs in through the login form like a browser."""

    def __init__(self, server: ServerHandle) -> None:
        self.server = server
        self.http = httpx.Client(base_url=server.url, timeout=30, follow_redirects=False)
        self.csrf = ""

    def login(self, name: str, password: str, next_url: str = "/") -> httpx.Response:
        """GET /login for the form's CSRF token, then POST the credentials."""
        page = self.http.get("/login")
        token = FIELD_CSRF.search(page.text)
        assert token, page.text
        resp = self.http.post(
            "/login",
            data={"csrf": token.group(1), "username": name, "password": password, "next": next_url},
        )
        if resp.status_code == 303:
            self.refresh_csrf()
        return resp

    def refresh_csrf(self) -> str:
        """Read the session's CSRF token from a page."""
        page = self.http.get("/adhoc")
        match = META_CSRF.search(page.text)
        assert match, page.text
        self.csrf = match.group(1)
        return self.csrf

    def api_post(
        self, path: str, body: dict[str, Any] | None = None, csrf: bool = True
    ) -> httpx.Response:
        """A JSON POST with the session cookie, as the console's scripts send it."""
        headers = {"x-csrf-token": self.csrf} if csrf else {}
        return self.http.post(path, json=body or {}, headers=headers)

    def form_post(self, path: str, data: dict[str, str], csrf: bool = True) -> httpx.Response:
        """A form POST with the session cookie and, unless told not to, the CSRF field."""
        fields = dict(data)
        if csrf:
            fields["csrf"] = self.csrf
        return self.http.post(path, data=fields)

    def close(self) -> None:
        self.http.close()
