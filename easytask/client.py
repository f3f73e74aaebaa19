"""The CLI's HTTP client for the server's JSON API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from easytask.errors import APIError, StartError


def checked(resp: httpx.Response) -> Any:
    """The JSON body of a successful answer; an APIError with the server's message otherwise."""
    if resp.status_code >= 400:
        try:
            message = resp.json().get("error") or resp.text
        except ValueError:
            message = resp.text or resp.reason_phrase
        raise APIError(message, status=resp.status_code)
    return resp.json()


class Client:
    """Thin wrapper: bearer token, JSON in and out, errors as EasyTask errors."""

    def __init__(self, url: str, token: str | None, timeout: float = 30.0) -> None:
        if not token:
            raise StartError(
                "no API token: set EASYTASK_TOKEN, or EASYTASK_CONFIG / .easytask/config.toml "
                "(written by `easytask demo`), or pass --token"
            )
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {token}", "x-easytask-client": "cli"},
            timeout=timeout,
            # Certificates are checked for https; a plain http server needs no TLS context at all
            # (loading the CA bundle costs ~0.15 s of every command). Only base_url is ever used.
            verify=self.url.startswith("https:"),
        )

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def _check(self, resp: httpx.Response) -> Any:
        return checked(resp)

    def _unreachable(self, exc: Exception) -> StartError:
        return StartError(
            f"cannot reach the server at {self.url}: {exc} (is `easytask server` running?)"
        )

    def get(self, path: str, **params: Any) -> Any:
        """GET a JSON resource."""
        clean = {k: v for k, v in params.items() if v is not None}
        try:
            return self._check(self._http.get(path, params=clean))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def get_bytes(self, path: str) -> bytes:
        """GET raw bytes (downloads)."""
        try:
            resp = self._http.get(path)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if resp.status_code >= 400:
            self._check(resp)
        return resp.content

    def stream_to(self, path: str, fh: Any, params: dict[str, Any]) -> tuple[int, str, str]:
        """GET a download into an open binary file: (bytes, SHA-256, export id header)."""
        import hashlib

        digest = hashlib.sha256()
        size = 0
        clean = {k: v for k, v in params.items() if v is not None}
        try:
            with self._http.stream(
                "GET", path, params=clean, timeout=httpx.Timeout(30.0, read=None)
            ) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                for chunk in resp.iter_bytes(1 << 16):
                    digest.update(chunk)
                    fh.write(chunk)
                    size += len(chunk)
                return size, digest.hexdigest(), resp.headers.get("x-easytask-export", "")
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST JSON, return JSON."""
        try:
            return self._check(self._http.post(path, json=body or {}))
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def upload(self, path: Path) -> Any:
        """Stream a local file to POST /api/uploads; returns its upload id, size and SHA-256."""

        def chunks() -> Iterator[bytes]:
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk

        try:
            resp = self._http.post(
                "/api/uploads",
                params={"name": path.name},
                content=chunks(),
                headers={
                    "content-type": "application/octet-stream",
                    "content-length": str(path.stat().st_size),
                },
                timeout=httpx.Timeout(30.0, write=None, read=600.0),
            )
            return self._check(resp)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def events(self, path: str) -> Iterator[dict[str, Any]]:
        """Read a server-sent event stream, one decoded event at a time."""
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    self._check(resp)
                for line in resp.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc


def login(url: str, body: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """POST /api/login without a token: a name and password for a new API token."""
    base = url.rstrip("/")
    try:
        resp = httpx.post(
            base + "/api/login", json=body, timeout=timeout, headers={"x-easytask-client": "cli"}
        )
    except httpx.TransportError as exc:
        raise StartError(f"cannot reach the server at {base}: {exc}") from exc
    data: dict[str, Any] = checked(resp)
    return data
