"""Shared test helpers: free ports, waiting with a deadline, real processes in their own groups."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `cond` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
        except Exception as exc:  # the condition may raise until the thing is up
            last_exc = exc
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what}" + (f": {last_exc!r}" if last_exc else "")
    )


class Proc:
    """A child process in its own process group, killed with its group on teardown."""

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill9(self) -> None:
        """SIGKILL the process itself (not its group: commands it started live on)."""
        try:
            os.kill(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)
        try:
            self.popen.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


def easytask_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "easytask", *args]


def db_execute(url: str, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one SQL statement on a server's database directly (SQLite or PostgreSQL)."""
    from sqlalchemy import text

    from easytask.store.db import make_engine

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(text(sql), params or {})
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


class ServerHandle:
    """A real `easytask server` process on loopback."""

    def __init__(self, proc: Proc, state_dir: Path, db_url: str | None = None) -> None:
        self.proc = proc
        self.state_dir = state_dir
        # the database the server uses: its SQLite file, or the PostgreSQL one it was given
        self.db_url = db_url or f"sqlite:///{state_dir / 'easytask.db'}"
        info = json.loads((state_dir / "server.json").read_text())
        self.url: str = info["url"]
        self.agents_addr: str = info["agents"]
        self.token = (state_dir / "admin.token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {self.token}"}, timeout=30
        )

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "EASYTASK_URL": self.url,
                "EASYTASK_TOKEN": self.token,
                "EASYTASK_CONFIG": "",
                "NO_COLOR": "1",
            }
        )
        return env

    def cli(
        self, *args: str, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the real CLI against this server."""
        return subprocess.run(
            easytask_cmd(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            cwd=REPO,
        )

    def get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(path, params=params)
        resp.raise_for_status()
        return resp.json()

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        resp = self.http.post(path, json=body or {})
        resp.raise_for_status()
        return resp.json()

    def agent_status(self, name: str) -> str | None:
        for agent in self.get("/api/agents")["agents"]:
            if agent["name"] == name:
                return str(agent["status"])
        return None

    def wait_job(self, job_id: int, timeout: float = 90) -> dict[str, Any]:
        final = {"success", "failed", "terminated", "unreachable", "skipped"}
        return wait_until(
            lambda: (d := self.get(f"/api/jobs/{job_id}"))["job"]["state"] in final and d,
            timeout=timeout,
            what=f"job {job_id} to finish",
        )

    def submit(self, pattern: str, command: str, **extra: Any) -> dict[str, Any]:
        return self.post("/api/jobs", {"pattern": pattern, "command": command, **extra})

    def log_lines(self, run_id: int) -> list[dict[str, Any]]:
        return list(self.get(f"/api/runs/{run_id}/log", limit=100000)["lines"])

    def close(self) -> None:
        self.http.close()
