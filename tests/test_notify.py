"""Webhooks on job finish: signed JSON, retried with backoff, every attempt on the record."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from tests.conftest import AgentFactory, ServerFactory
from tests.support import ServerHandle, wait_until

SECRET = "s3cret-for-the-test"


class Receiver:
    """A webhook endpoint on loopback that fails its first `fail` requests with HTTP 500."""

    def __init__(self, fail: int = 0) -> None:
        self.fail = fail
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((dict(self.headers.items()), body))
                code = 500 if len(receiver.requests) <= receiver.fail else 204
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
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
        ["3", "ok", "204"],
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
        server = start_server()
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
