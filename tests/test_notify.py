"""Webhooks on job finish: signed JSON, retried with backoff, every attempt on the record; sent only
where the server's allowlist says, their details shown to admins only."""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.support import Browserless, add_user, admin_password
from tests.conftest import AgentFactory, ServerFactory, write
from tests.support import ServerHandle, db_execute, easytask_cmd, wait_until

SECRET = "s3cret-for-the-test"


class Receiver:
    """A webhook endpoint on loopback that fails its first `fail` requests with HTTP 500 (or,
    with `redirect`, answers them 302 to that URL), and counts every connection it accepts."""

    def __init__(self, fail: int = 0, redirect: str | None = None) -> None:
        self.fail = fail
        self.redirect = redirect
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.connections = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                failing = len(receiver.requests) <= receiver.fail
                code = (302 if receiver.redirect else 500) if failing else 204
                self.send_response(code)
                if failing and receiver.redirect:
                    self.send_header("location", receiver.redirect)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def process_request(self, request: Any, client_address: Any) -> None:
                receiver.connections += 1
                super().process_request(request, client_address)

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail=2)
    yield r
    r.close()


def _deliveries(server: ServerHandle, job_id: int) -> list[dict[str, Any]]:
    return list(server.get(f"/api/jobs/{job_id}/deliveries")["deliveries"])


def test_webhook_is_retried_signed_and_recorded(
    start_server: ServerFactory,
    start_agent: AgentFactory,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A receiver that fails twice gets a third attempt; all three are stored; the HMAC checks."""
    monkeypatch.setenv("EASYTASK_NOTIFY_SECRET", SECRET)
    server = start_server(None, "--notify-url", receiver.url, "--public-url", "https://et.example")
    start_agent(server, "n1")
    job_id = server.submit("n1", "echo hi; exit 4")["job"]["id"]
    server.wait_job(job_id)
    rows = wait_until(
        lambda: (d := _deliveries(server, job_id)) and d[-1]["ok"] and d,
        timeout=60,
        what="webhook delivered",
    )
    assert [(r["attempt"], r["ok"], r["status_code"]) for r in rows] == [
        (1, False, 500),
        (2, False, 500),
        (3, True, 204),
    ]
    assert rows[0]["error"] == "HTTP 500" and rows[2]["error"] == ""
    assert len({r["delivery"] for r in rows}) == 1
    assert {r["url"] for r in rows} == {receiver.url}
    assert len(receiver.requests) == 3
    for headers, body in receiver.requests:
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["X-EasyTask-Signature"], expected)
        assert headers["X-EasyTask-Event"] == "job.finished"
        assert headers["X-EasyTask-Delivery"] == rows[0]["delivery"]
    data = json.loads(receiver.requests[-1][1])
    assert data["job"] == job_id
    assert (data["kind"], data["status"], data["pattern"]) == ("adhoc", "failed", "n1")
    assert data["counts"] == {"failed": 1}
    assert data["url"] == f"https://et.example/jobs/{job_id}"
    assert data["started_at"] and data["finished_at"]
    # a tampered body does not match the signature
    forged = receiver.requests[-1][1].replace(b'"failed"', b'"success"')
    assert (
        "sha256=" + hmac.new(SECRET.encode(), forged, hashlib.sha256).hexdigest()
        != (receiver.requests[-1][0]["X-EasyTask-Signature"])
    )
    listing = server.cli("deliveries", str(job_id))
    assert listing.returncode == 0, listing.stderr
    assert [ln.split()[1:4] for ln in listing.stdout.splitlines()[1:]] == [
        ["1", "failed", "500"],
        ["2", "failed", "500"],
        ["3", "delivered", "204"],
    ]
    metrics = server.http.get("/metrics").text
    assert 'easytask_webhook_attempts_total{outcome="error"} 2' in metrics
    assert 'easytask_webhook_attempts_total{outcome="ok"} 1' in metrics


def test_playbook_notify_only_on_failure(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Any
) -> None:
    """A playbook's `notify: {events: failed}` calls the hook for a failed job, not a good one."""
    hook = Receiver(fail=0)
    try:
        server = start_server(None, "--notify-allow", f"127.0.0.1:{hook.port}")
        start_agent(server, "p1")

        def play(command: str) -> int:
            text = (
                f"name: nightly\nhosts: p1\nnotify: {{url: '{hook.url}', events: failed}}\n"
                f"tasks:\n  - name: t\n    shell: {command}\n"
            )
            job = server.post("/api/playbooks/run", {"name": "nightly.yml", "text": text})
            job_id = int(job["job"]["id"])
            server.wait_job(job_id)
            return job_id

        good = play("'true'")
        bad = play("'exit 1'")
        rows = wait_until(lambda: _deliveries(server, bad), timeout=30, what="delivery")
        assert [(r["ok"], r["event"]) for r in rows] == [(True, "failed")]
        assert _deliveries(server, good) == []
        assert len(hook.requests) == 1
        data = json.loads(hook.requests[0][1])
        assert (data["job"], data["kind"], data["name"]) == (bad, "playbook", "nightly")
        # without a configured secret the server signs with its own generated one
        secret = (server.state_dir / "webhook.secret").read_text().strip().encode()
        headers, body = hook.requests[0]
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        assert headers["X-EasyTask-Signature"] == expected
        assert oct((server.state_dir / "webhook.secret").stat().st_mode & 0o777) == "0o600"
    finally:
        hook.close()


def test_deliveries_of_an_unknown_job_is_404(start_server: ServerFactory) -> None:
    """Asking for the deliveries of a job that does not exist is a 404 with a message."""
    server = start_server()
    resp = server.http.get("/api/jobs/999/deliveries")
    assert resp.status_code == 404
    assert "no job 999" in resp.text


PLAY = "name: probe\nhosts: p1\nnotify: {notify}\ntasks:\n  - name: t\n    shell: 'true'\n"


def _refusals(server: ServerHandle) -> list[dict[str, Any]]:
    events = server.get("/api/audit", action="job.refused", limit=100)["events"]
    return [e["detail"] for e in events if e["detail"].get("kind") == "notify"]


def _count(server: ServerHandle, sql: str, **params: Any) -> int:
    return int(db_execute(server.db_url, sql, params)[0][0])


def test_notify_outside_the_allowlist_is_refused_at_submit_and_never_called(
    start_server: ServerFactory, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """A playbook whose `notify:` names a URL outside --notify-allow is refused with 400 naming
    the URL and the setting, nothing is stored and the URL is never called; an allowed receiver's
    redirect to it is not followed; an allowed name that resolves to a loopback address is
    refused as the webhook is sent."""
    internal = Receiver()  # a service inside the network, which no playbook should reach
    allowed = Receiver(fail=1, redirect=internal.url)
    try:
        books = tmp_path / "books"
        write(books / "probe.yml", PLAY.format(notify=f"{{url: '{internal.url}'}}"))
        scheduled = PLAY.replace("probe", "nightly").replace(
            "tasks:", "schedule: '@hourly'\ntasks:"
        )
        write(books / "nightly.yml", scheduled.format(notify=f"{{url: '{internal.url}'}}"))
        server = start_server(
            None,
            "--notify-allow",
            f"http://127.0.0.1:{allowed.port}/hook",
            "--notify-allow",
            f"localhost:{internal.port}",
            "--playbooks",
            str(books),
        )
        start_agent(server, "p1")

        def post(notify: str) -> httpx.Response:
            text = PLAY.format(notify=notify)
            return server.http.post("/api/playbooks/run", json={"name": "probe.yml", "text": text})

        jobs = _count(server, "SELECT count(*) FROM job")
        expected = (
            f"webhook URL '{internal.url}' is not allowed: the server sends webhooks only to its "
            "notify_url and the targets of notify_allow (--notify-allow, EASYTASK_NOTIFY_ALLOW)"
        )
        for notify in (
            f"{{url: '{internal.url}'}}",
            f"[{{url: '{allowed.url}'}}, {{url: '{internal.url}', events: failed}}]",
            f"{{url: 'http://127.0.0.1:{allowed.port}/other'}}",
        ):
            resp = post(notify)
            assert resp.status_code == 400, resp.text
            assert (
                "is not allowed" in resp.json()["error"]
                and "--notify-allow" in resp.json()["error"]
            )
        assert expected in post(f"{{url: '{internal.url}'}}").json()["error"]
        # the server's own playbooks: refused to run, by hand or through a schedule, and
        # listed with the reason
        for path in ("/api/playbooks/probe.yml/run", "/api/schedules/nightly/run"):
            resp = server.http.post(path, json={})
            assert resp.status_code == 400 and expected in resp.json()["error"], path
        entries = server.get("/api/playbooks")["playbooks"]
        assert [(e["file"], [expected in p["message"] for p in e["errors"]]) for e in entries] == [
            ("nightly.yml", [True]),
            ("probe.yml", [True]),
        ]
        assert _count(server, "SELECT count(*) FROM job") == jobs
        assert _count(server, "SELECT count(*) FROM job_webhook") == 0
        refused = _refusals(server)
        assert len(refused) == 6
        assert {d["target"] for d in refused} == {
            f"http://127.0.0.1:{internal.port}",
            f"http://127.0.0.1:{allowed.port}",
        }

        def play(url: str) -> int:
            resp = post(f"{{url: '{url}'}}")
            assert resp.status_code == 201, resp.text
            job_id = int(resp.json()["job"]["id"])
            server.wait_job(job_id)
            return job_id

        # the allowed receiver answers the first attempt with a redirect to the internal one
        job_id = play(allowed.url)
        rows = wait_until(
            lambda: (d := _deliveries(server, job_id)) and d[-1]["ok"] and d,
            timeout=30,
            what="delivered on the second attempt",
        )
        assert [(r["attempt"], r["status_code"], r["ok"]) for r in rows] == [
            (1, 302, False),
            (2, 204, True),
        ]
        # an allowed name that resolves to a loopback address: refused as it is sent, once
        job_id = play(f"http://localhost:{internal.port}/hook")
        rows = wait_until(lambda: _deliveries(server, job_id), timeout=30, what="refusal")
        assert [(r["attempt"], r["ok"], r["status_code"]) for r in rows] == [(1, False, None)]
        assert rows[0]["error"].startswith("refused: localhost resolves to "), rows[0]
        assert "a local address" in rows[0]["error"]
        assert len(allowed.requests) == 2
        assert (internal.connections, internal.requests) == (0, [])
    finally:
        allowed.close()
        internal.close()


def test_delivery_details_are_for_admins_only(
    start_server: ServerFactory, start_agent: AgentFactory, receiver: Receiver
) -> None:
    """Admins see each attempt's URL, HTTP status and error in the API, the CLI and the
    console; operators and viewers see only delivered or failed."""
    server = start_server(None, "--notify-url", receiver.url)
    start_agent(server, "d1")
    job_id = server.submit("d1", "true")["job"]["id"]
    server.wait_job(job_id)
    rows = wait_until(
        lambda: (d := _deliveries(server, job_id)) and d[-1]["ok"] and d,
        timeout=60,
        what="webhook delivered",
    )
    assert [(r["result"], r["status_code"], r["error"]) for r in rows] == [
        ("failed", 500, "HTTP 500"),
        ("failed", 500, "HTTP 500"),
        ("delivered", 204, ""),
    ]
    assert {r["url"] for r in rows} == {receiver.url}
    admin = Browserless(server)
    assert admin.login("admin", admin_password(server)).status_code == 303
    page = admin.http.get(f"/jobs/{job_id}").text
    admin.close()
    assert 'data-testid="deliveries"' in page
    assert receiver.url in page and "HTTP 500" in page
    listing = server.cli("deliveries", str(job_id))
    assert receiver.url in listing.stdout and "HTTP 500" in listing.stdout
    for name, role in (("opal", "operator"), ("vic", "viewer")):
        add_user(server, name, role, f"{name}-password-1")
        token = server.post("/api/tokens", {"name": "t", "user": name})["token"]
        resp = server.http.get(
            f"/api/jobs/{job_id}/deliveries", headers={"authorization": f"Bearer {token}"}
        )
        assert resp.status_code == 200
        shown = resp.json()["deliveries"]
        assert [(r["attempt"], r["result"]) for r in shown] == [
            (1, "failed"),
            (2, "failed"),
            (3, "delivered"),
        ]
        for row in shown:
            assert not {"url", "status_code", "error", "duration_ms"} & set(row), row
        assert receiver.url not in resp.text and "HTTP" not in resp.text
        cli = subprocess.run(
            easytask_cmd("deliveries", str(job_id)),
            env={**server.env(), "EASYTASK_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        lines = cli.stdout.splitlines()
        assert lines[0].split() == ["AT", "ATTEMPT", "RESULT"]
        assert [ln.split()[1:] for ln in lines[1:]] == [
            ["1", "failed"],
            ["2", "failed"],
            ["3", "delivered"],
        ]
        console = Browserless(server)
        assert console.login(name, f"{name}-password-1").status_code == 303
        page = console.http.get(f"/jobs/{job_id}").text
        console.close()
        assert 'data-testid="deliveries"' in page and "delivered" in page
        assert receiver.url not in page and "HTTP 500" not in page and ">Error</th>" not in page
