"""What a stranger can send and read: readiness details, header values, oversized bodies."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest
from starlette.requests import Request

from easytask.web.requests import read_capped
from tests.conftest import ServerFactory
from tests.support import PostgresCluster, ServerHandle, wait_until


@pytest.mark.postgres
def test_readyz_says_not_ready_and_logs_why(
    postgres: PostgresCluster, start_server: ServerFactory
) -> None:
    """A database that stops answering makes /readyz say it is unreachable, never the error
    text (no address, no database name)."""
    url = postgres.new_database()
    name = url.rsplit("/", 1)[1]
    server = start_server(None, "--db", url)
    postgres.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
    postgres.execute(
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    )
    try:
        ready = wait_until(
            lambda: (r := httpx.get(server.url + "/readyz", timeout=30)).status_code == 503 and r,
            timeout=60,
            what="readyz to fail",
        )
        body = ready.json()
        assert (body["status"], list(body["problems"])) == ("not ready", ["database"])
        assert body["problems"]["database"].startswith("unavailable: unreachable for ")
        assert ready.headers["retry-after"].isdigit()
        assert name not in ready.text and "connection" not in ready.text
        wait_until(
            lambda: "is unavailable: unreachable" in server.proc.output(),
            timeout=30,
            what="the reason in the server log",
        )
    finally:
        postgres.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    wait_until(
        lambda: httpx.get(server.url + "/readyz", timeout=30).status_code == 200,
        timeout=60,
        what="readyz to recover",
    )


def test_metrics_refuse_a_non_ascii_bearer_with_401(
    start_server: ServerFactory, monkeypatch: Any
) -> None:
    """Any bytes in the bearer value get 401 from /metrics, with or without a metrics token."""
    monkeypatch.setenv("EASYTASK_METRICS_TOKEN", "scrape-me-please")
    server = start_server()
    for value in (b"Bearer \xc3\xa9t\xc3\xa9", b"Bearer \xff\xfe", b"bearer scrape-me-\xe9"):
        resp = httpx.get(server.url + "/metrics", headers={"authorization": value})
        assert resp.status_code == 401, (value, resp.status_code)
    ok = httpx.get(server.url + "/metrics", headers={"authorization": "Bearer scrape-me-please"})
    assert ok.status_code == 200


def test_client_header_enters_the_audit_source_only_when_it_is_a_short_name(
    start_server: ServerFactory,
) -> None:
    """`X-EasyTask-Client` names the client kind in audit sources only if it is a short name."""
    server = start_server()
    values: list[str | bytes] = ["cli 10.9.9.9", "x" * 100, b"\xc3\xa9vil", "cli"]
    with httpx.Client(base_url=server.url, timeout=30) as anon:
        for i, value in enumerate(values):
            resp = anon.post(
                "/api/login",
                json={"name": f"nobody{i}", "password": "guess"},
                headers={"x-easytask-client": value},
            )
            assert resp.status_code == 401
    events = server.get("/api/audit", action="login.failed", limit=10)["events"]
    sources = {e["detail"]["user"]: e["source"] for e in events}
    assert sources == {
        "nobody0": "api 127.0.0.1",
        "nobody1": "api 127.0.0.1",
        "nobody2": "api 127.0.0.1",
        "nobody3": "cli 127.0.0.1",
    }


def _refused_midway(server: ServerHandle, path: str, cap: int, headers: str = "") -> bytes:
    """Send a chunked body past `cap` without ever ending it; the server's first answer line."""
    host, port = server.url.split("//", 1)[1].split(":")
    with socket.create_connection((host, int(port.rstrip("/"))), timeout=30) as sock:
        sock.sendall(
            (
                f"POST {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n"
                f"Content-Type: application/x-www-form-urlencoded\r\n{headers}\r\n"
            ).encode()
        )
        piece = b"a" * 4096
        for _ in range(cap // len(piece) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        # no closing chunk: only a server that refuses as soon as the cap is passed answers
        answer = b""
        while b"\r\n" not in answer:
            data = sock.recv(4096)
            if not data:
                break
            answer += data
        return answer.split(b"\r\n", 1)[0]


def test_oversized_bodies_are_refused_as_soon_as_they_pass_the_cap(
    start_server: ServerFactory,
) -> None:
    """The sign-in doors and the API answer 413 once a body passes their cap, unread to its end."""
    server = start_server()
    auth = f"Authorization: Bearer {server.token}\r\n"
    assert b" 413 " in _refused_midway(server, "/api/login", 8 * 1024)
    assert b" 413 " in _refused_midway(server, "/login", 64 * 1024)
    assert b" 413 " in _refused_midway(server, "/api/jobs", 1 << 20, auth)


def test_a_body_of_many_small_chunks_is_gathered_whole_and_stops_at_the_cap() -> None:
    """A body sent in many tiny pieces is gathered in order into one buffer, and reading stops
    at the first piece that passes the cap (nothing after it is asked for)."""
    size = 8

    def body_of(chunks: int) -> tuple[Request, list[int]]:
        asked = [0]

        async def receive() -> dict[str, Any]:
            asked[0] += 1
            piece = asked[0].to_bytes(size, "big")
            return {"type": "http.request", "body": piece, "more_body": asked[0] < chunks}

        return Request({"type": "http", "method": "POST", "headers": []}, receive), asked

    request, asked = body_of(131072)
    raw = asyncio.run(read_capped(request, 1 << 20))
    assert raw is not None and len(raw) == 131072 * size
    assert [int.from_bytes(raw[i : i + size], "big") for i in (0, size, len(raw) - size)] == [
        1,
        2,
        131072,
    ]
    request, asked = body_of(1 << 30)  # endless, as far as the reader can tell
    assert asyncio.run(read_capped(request, 1024)) is None
    assert asked[0] == 1024 // size + 1
