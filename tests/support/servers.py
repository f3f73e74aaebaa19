"""Real `easytask server` and `easytask agent` processes on loopback, and handles to drive them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.support.procs import REPO, Proc, Procs, easytask_cmd, wait_until

FINAL_STATES = {"success", "failed", "terminated", "unreachable", "skipped"}


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

    def __init__(
        self, proc: Proc, state_dir: Path, db_url: str | None = None, http_timeout: float = 30
    ) -> None:
        self.proc = proc
        self.state_dir = state_dir
        # the database the server uses: its SQLite file, or the PostgreSQL one it was given
        self.db_url = db_url or f"sqlite:///{state_dir / 'easytask.db'}"
        info = json.loads((state_dir / "server.json").read_text())
        self.url: str = info["url"]
        self.agents_addr: str = info["agents"]
        self.token = (state_dir / "admin.token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.url,
            headers={"authorization": f"Bearer {self.token}"},
            timeout=http_timeout,
        )
        # the CLI's config file (EASYTASK_CONFIG); "" looks in the usual places
        self.cli_config = ""

    def env(self) -> dict[str, str]:
        """Environment for the real CLI: this server's URL and admin token."""
        env = dict(os.environ)
        env.update(
            {
                "EASYTASK_URL": self.url,
                "EASYTASK_TOKEN": self.token,
                "EASYTASK_CONFIG": self.cli_config,
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

    def online(self, label: str) -> int:
        """How many agents reporting a group label (approved or not) are online now."""
        return sum(
            1
            for a in self.get("/api/agents")["agents"]
            if a["status"] == "online" and label in a["labels"]
        )

    def wait_job(self, job_id: int, timeout: float = 90) -> dict[str, Any]:
        return wait_until(
            lambda: (d := self.get(f"/api/jobs/{job_id}"))["job"]["state"] in FINAL_STATES and d,
            timeout=timeout,
            what=f"job {job_id} to finish",
        )

    def submit(self, pattern: str, command: str, **extra: Any) -> dict[str, Any]:
        return self.post("/api/jobs", {"pattern": pattern, "command": command, **extra})

    def log_lines(self, run_id: int) -> list[dict[str, Any]]:
        return list(self.get(f"/api/runs/{run_id}/log", limit=100000)["lines"])

    def close(self) -> None:
        self.http.close()


def user_client(server: ServerHandle, name: str, role: str, scope: str = "") -> httpx.Client:
    """An API client signed in as a new user of this role (and host scope)."""
    server.post(
        "/api/users", {"name": name, "role": role, "password": "long-enough-1", "scope": scope}
    )
    token = server.post("/api/tokens", {"name": "t", "user": name})["token"]
    return httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {token}"}, timeout=30
    )


def launch_server(
    procs: Procs,
    state_dir: Path,
    *options: str,
    db_url: str | None = None,
    cwd: Path | None = None,
    http_timeout: float = 30,
) -> ServerHandle:
    """Start `easytask server --state-dir STATE_DIR --http 127.0.0.1:0 OPTIONS` and wait until it
    has written its server.json."""
    state_dir.mkdir(parents=True, exist_ok=True)
    info = state_dir / "server.json"
    info.unlink(missing_ok=True)
    args = easytask_cmd("server", "--state-dir", str(state_dir), "--http", "127.0.0.1:0", *options)
    proc = procs.start(args, state_dir / "server.log", cwd=cwd)
    wait_until(lambda: info.exists() or not proc.alive(), timeout=60, what="server start")
    if not proc.alive():
        raise AssertionError(f"easytask server did not start:\n{proc.output()}")
    return ServerHandle(proc, state_dir, db_url, http_timeout)


def launch_agent(
    procs: Procs,
    server: ServerHandle,
    name: str,
    state_dir: Path,
    *options: str,
    command: list[str] | None = None,
    enroll: bool = True,
    wait: bool = True,
    timeout: float = 60,
    interval: float = 0.05,
) -> Proc:
    """Start `easytask agent` (or `command`) for `server` with OPTIONS, enrolled with a one-use
    token unless `enroll` is false, and unless `wait` is false wait until the server has it online."""
    state_dir.mkdir(parents=True, exist_ok=True)
    args = [
        *(command or easytask_cmd()),
        "agent",
        "--server",
        server.agents_addr,
        "--name",
        name,
        "--state-dir",
        str(state_dir),
        *options,
    ]
    if enroll:
        args += ["--enroll", server.post("/api/agents/tokens", {"uses": 1, "ttl": "10m"})["token"]]
    proc = procs.start(args, state_dir / "agent.log")

    def online() -> bool:
        if not proc.alive():
            raise AssertionError(f"agent {name} exited:\n{proc.tail()}")
        return server.agent_status(name) == "online"

    if wait:
        wait_until(online, timeout=timeout, interval=interval, what=f"agent {name} online")
    return proc
