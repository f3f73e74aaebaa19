"""`easytask server`: the store, the agent listener, the job engine and the web app in one process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn

from easytask import __version__
from easytask.config import Settings
from easytask.errors import EasyTaskError, NoHostsMatched, PlaybookError, StartError
from easytask.inventory import Inventory, load_inventory
from easytask.plan import PlannedRun, PlaybookPlan, plan_adhoc, plan_playbook
from easytask.playbook import load_playbook
from easytask.scheduler import secretfile
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.engine import JobEngine
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.metrics import Metrics
from easytask.scheduler.notify import Notifier, Webhook
from easytask.scheduler.playbooks import (
    ResumeError,
    check_resumable,
    resume_playbook,
    submit_playbook,
)
from easytask.scheduler.retention import Retention
from easytask.scheduler.schedules import Scheduler
from easytask.store import schema
from easytask.store.db import Store, safe_url, sqlite_url
from easytask.store.models import AgentState, Job
from easytask.transport import sshlog
from easytask.transport.agentless import SSHPool
from easytask.transport.agentlink import AgentListener
from easytask.transport.keys import load_or_create_key
from easytask.web.app import create_web_app

log = logging.getLogger("easytask.server")


def split_addr(value: str, default_port: int) -> tuple[str, int]:
    """`host:port`, `:port` or `host` into a pair."""
    host, sep, port = value.rpartition(":")
    if not sep:
        return value or "127.0.0.1", default_port
    try:
        return (host.strip("[]") or "0.0.0.0"), int(port)
    except ValueError as exc:
        raise StartError(f"not an address: {value!r} (use HOST:PORT)") from exc


class Server:
    """One EasyTask server process."""

    def __init__(self, config: Settings) -> None:
        sshlog.install()  # asyncssh formats no debug message nobody reads
        self.config = config
        self.state_dir = config.state_dir
        self.server_id = f"{socket.gethostname()}:{os.getpid()}"
        self.pending_timeout = config.pending_timeout
        self.store: Store
        self.hub = LiveHub()
        self.metrics = Metrics()
        self._inventory: Inventory | None = None
        self._inventory_stamp: Any = None
        self._stop = asyncio.Event()
        self.cluster: Cluster | None = None
        self.fenced = False  # another server took this one's work over: stop, exit 1
        self.http_port = 0
        self.agents_port = 0

    # -- inventory --------------------------------------------------------------------------

    def _inventory_now(self) -> Inventory:
        path = self.config.inventory
        if not path or not Path(path).exists():
            if self._inventory is None:
                self._inventory = load_inventory([])
            return self._inventory
        stamp = _tree_stamp(Path(path))
        if self._inventory is None or stamp != self._inventory_stamp:
            self._inventory = load_inventory(path)
            self._inventory_stamp = stamp
        return self._inventory

    def _hostvars(self, host: str) -> dict[str, Any]:
        inventory = self._inventory_now()
        if host in inventory.hosts:
            return inventory.host_vars(host)
        return {}

    async def merged_inventory(self) -> Inventory:
        """The inventory plus the accepted agents it does not list."""
        inventory = await asyncio.to_thread(self._inventory_now)
        return inventory.with_extra_hosts(self.registry.declared_hosts())

    async def plan_playbook_bundle(
        self,
        name: str,
        text: str,
        files: dict[str, bytes],
        limit: str | None,
        extra_vars: dict[str, Any],
    ) -> PlaybookPlan:
        """Write a submitted playbook and its files to a private bundle dir, load and plan it."""
        bundle = self.state_dir / "bundles" / secrets.token_hex(8)
        base = Path(name).name or "playbook.yml"
        entries = {base: text.encode()}
        for rel, data in files.items():
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts or not parts:
                raise PlaybookError(
                    f"file path {rel!r} must be relative, inside the playbook's directory"
                )
            entries[str(Path(*parts))] = data
        for rel, data in entries.items():
            target = bundle / rel
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            target.write_bytes(data)
        playbook = await asyncio.to_thread(load_playbook, bundle / base)
        inventory = await self.merged_inventory()
        return plan_playbook(playbook, inventory, extra_vars=extra_vars, limit=limit)

    async def _submit_scheduled(self, path: Path, name: str) -> int:
        playbook = await asyncio.to_thread(load_playbook, path)
        plan = plan_playbook(playbook, await self.merged_inventory())
        job, _ = await submit_playbook(
            self.engine,
            plan,
            user="schedule",
            source=f"schedule {name}",
            pending_timeout=self.pending_timeout,
            kind="schedule",
        )
        await self.store.call(
            self.store.audit,
            "schedule",
            "job.submit",
            f"schedule {name}",
            {"job": job.id, "kind": "schedule", "playbook": plan.name, "hosts": list(plan.hosts)},
        )
        assert job.id is not None
        return job.id

    async def _resume_playbook(self, job: Job) -> int:
        """Plan a playbook job again from what it stored and continue it where it stopped."""
        try:
            spec = json.loads(job.vars or "{}")
        except ValueError:
            spec = {}
        if not isinstance(spec, dict) or not spec.get("playbook"):
            raise ResumeError("the job holds no playbook to plan it again from")
        try:
            playbook = await asyncio.to_thread(load_playbook, Path(spec["playbook"]))
        except EasyTaskError as exc:
            raise ResumeError(f"{spec['playbook']}: {exc}") from exc
        plan = plan_playbook(
            playbook,
            await self.merged_inventory(),
            extra_vars={
                **(spec.get("extra_vars") or {}),
                **secretfile.secret_extra_vars(self.engine.secrets_dir, job.id or 0),
            },
            limit=spec.get("limit"),
        )
        check_resumable(plan, spec)
        return await resume_playbook(self.engine, plan, job, self.pending_timeout)

    async def plan_adhoc(self, pattern: str, command: str) -> list[PlannedRun]:
        """Resolve a pattern against the inventory plus the accepted agents."""
        inventory = await asyncio.to_thread(self._inventory_now)
        merged = inventory.with_extra_hosts(self.registry.declared_hosts())
        try:
            return plan_adhoc(merged, pattern, command)
        except NoHostsMatched as exc:
            waiting = [
                name
                for name, info in self.registry.agents.items()
                if info.state != AgentState.ACCEPTED and name in pattern
            ]
            if waiting:
                raise NoHostsMatched(
                    f"{exc.message}; agent(s) {', '.join(sorted(waiting))} not accepted "
                    f"(pending or revoked): `easytask agents accept NAME`"
                ) from exc
            raise

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the writer, the agent listener and the web server."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        url = self.config.db or sqlite_url(self.state_dir / "easytask.db")
        self.store = Store(url)
        self.store.owner = self._instance_id()
        created = await self.store.call(schema.prepare, self.store.engine, url)
        if created == "created":
            log.info("created the database schema in %s", safe_url(url))
        self.admin_token = await self._ensure_admin()
        self.writer = LogWriter(self.store)
        self.writer.start()
        # agents record the lasting id of the server holding them (servers share the database)
        self.registry = AgentRegistry(self.store, self.hub, self.store.owner)
        await self.registry.load()
        self.pool = SSHPool()
        self.engine = JobEngine(
            self.store,
            self.writer,
            self.hub,
            self.registry,
            self.pool,
            known_hosts=self.config.ssh_known_hosts,
        )
        self.engine.reattach_timeout = self.config.reattach_timeout
        self.engine.output_limit = self.config.output_limit or None
        self.engine.on_run_started.append(self.metrics.run_started)
        self.notifier = Notifier(
            self.store,
            self._webhook_secret(),
            self.config.public_url or "",
            default=Webhook(self.config.notify_url, self.config.notify_events)
            if self.config.notify_url
            else None,
            on_attempt=self.metrics.webhook_attempt,
        )
        self.engine.on_job_finished.append(self._job_finished)
        self.engine.secrets_dir = self.state_dir / "secrets"
        client_key = load_or_create_key(self.state_dir / "client_key")
        self.client_public_key = client_key.export_public_key("openssh").decode().strip()
        self.listener = AgentListener(
            self.registry, client_key, self.config.keepalive_interval, self.config.keepalive_count
        )
        host, port = split_addr(self.config.agents, 8022)
        try:
            self.agents_port = await self.listener.start(host, port)
        except OSError as exc:
            raise StartError(f"cannot listen for agents on {host}:{port}: {exc}") from exc
        http_host, http_port = split_addr(self.config.http, 8080)
        # IPPROTO_TCP explicitly: asyncio then sets TCP_NODELAY on accepted connections
        family = socket.AF_INET6 if ":" in http_host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((http_host, http_port))
        except OSError as exc:
            sock.close()
            raise StartError(f"cannot listen for HTTP on {http_host}:{http_port}: {exc}") from exc
        sock.listen(1024)
        sock.setblocking(False)
        self.http_port = sock.getsockname()[1]
        self.app = await create_web_app(self)
        uv_config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            # the client address (audit log, login rate limits) is the TCP peer unless a proxy
            # we were told about says otherwise
            proxy_headers=self.config.trusted_proxy is not None,
            forwarded_allow_ips=self.config.trusted_proxy or "",
        )
        self.http = _Uvicorn(uv_config)
        self._http_task = asyncio.create_task(self.http.serve(sockets=[sock]), name="http")
        while not self.http.started:
            if self._http_task.done():
                self._http_task.result()
                raise StartError("web server stopped during start")
            await asyncio.sleep(0.01)
        self.http_url = f"http://{_url_host(http_host)}:{self.http_port}"
        if not self.config.public_url:
            self.notifier.console_url = self.http_url
        info = {
            "pid": os.getpid(),
            "version": __version__,
            "url": self.http_url,
            "agents": f"{host}:{self.agents_port}",
            "db": safe_url(url),
            "client_key": self.client_public_key,
        }
        tmp = self.state_dir / "server.json.tmp"
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        os.replace(tmp, self.state_dir / "server.json")  # readers never see half a file
        log.info(
            "EasyTask %s serving agents on %s:%d and HTTP on %s",
            __version__,
            host,
            self.agents_port,
            self.http_url,
        )
        if not self.store.is_sqlite:
            await self._join_cluster(f"{host}:{self.agents_port}")
        self.scheduler = Scheduler(
            self.store,
            Path(self.config.playbooks) if self.config.playbooks else None,
            self._submit_scheduled,
            self.server_id,
            interval=self.config.schedule_interval,
        )
        self.scheduler.start()
        self.retention = Retention(
            self.store,
            self.config.retention,
            self.config.retention_failed,
            self.config.prune_interval,
        )
        self.retention.start()
        counts = await self.engine.resume(self._hostvars, self._resume_playbook)
        if any(counts.values()):
            log.warning(
                "taking over from the previous server process: %d run(s) resumed, "
                "%d agentless run(s) failed (connection lost)",
                counts["resumed"],
                counts["failed"],
            )

    async def _join_cluster(self, agents_addr: str) -> None:
        """Share the work with the other servers on this database (see scheduler.cluster)."""
        cluster = Cluster(
            self.store,
            self.engine,
            self.registry,
            self.hub,
            self.store.owner,
            beat=max(self.config.server_timeout / 5, 0.2),
            dead_after=self.config.server_timeout,
        )
        self.engine.cluster = cluster
        self.registry.on_online.append(lambda _name: cluster.agent_online())
        self.registry.on_changed.append(lambda name: cluster.notify("agent", name=name))
        self.writer.on_written.append(cluster.lines_written)
        cluster.on_fenced.append(self._fenced)

        async def take_over(server: str, jobs: list[int]) -> None:
            await self.engine.resume(
                self._hostvars, self._resume_playbook, job_ids=jobs, why=f"server {server} stopped"
            )

        cluster.on_take_over.append(take_over)
        await cluster.start(self.http_url, agents_addr, self.server_id)
        self.cluster = cluster

    def _fenced(self) -> None:
        # The server that took over re-attached from what was stored: lines still buffered
        # here would be stored twice, so they are dropped, and this process stops.
        self.fenced = True
        self.writer.fence()
        self.stop()

    async def live_servers(self) -> set[str]:
        """Ids of the servers sharing the database whose heartbeat is recent (this one too)."""
        if self.cluster is None:
            return {self.store.owner}
        return await self.cluster.live_servers()

    async def _job_finished(self, job: Job) -> None:
        self.metrics.job_finished(job.state)
        await self.notifier.job_finished(job)

    def _webhook_secret(self) -> bytes:
        """The HMAC key for webhook signatures: configured, else STATE_DIR/webhook.secret."""
        if self.config.notify_secret:
            return self.config.notify_secret.encode()
        path = self.state_dir / "webhook.secret"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32) + "\n")
        return path.read_text().strip().encode()

    async def ready(self) -> dict[str, str]:
        """What /readyz checks: the database answers, the agent listener is up. Empty if ready."""
        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(5):
                await self.store.call(self.store.ping)
        except Exception as exc:
            problems["database"] = f"{type(exc).__name__}: {exc}"
        if not self.listener.listening:
            problems["agent_listener"] = "not listening"
        return problems

    def _instance_id(self) -> str:
        """This server's lasting identity (STATE_DIR/server.id), the same across restarts."""
        path = self.state_dir / "server.id"
        if not path.exists():
            tmp = path.with_name("server.id.tmp")
            tmp.write_text(secrets.token_hex(8) + "\n")
            os.replace(tmp, path)
        return path.read_text().strip()

    async def _ensure_admin(self) -> str:
        path = self.state_dir / "admin.token"
        if path.exists():
            return path.read_text().strip()
        existing = await self.store.call(self.store.get_user, "admin")
        await self.store.call(self.store.ensure_user, "admin", "admin")
        token = await self.store.call(self.store.create_api_token, "admin", "initial admin token")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(token + "\n")
        if existing is not None and existing.password_hash:
            # another server on this database set the admin up: its password stays the one
            log.info("the admin user exists already (another server): no admin.password written")
            return token
        password = secrets.token_urlsafe(12)
        fd = os.open(
            self.state_dir / "admin.password", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        return token

    async def wait(self) -> None:
        """Until stop() is called."""
        await self._stop.wait()

    def stop(self) -> None:
        """Ask the server to stop."""
        self._stop.set()

    async def close(self) -> None:
        """Stop taking work, end runs in flight, store what is buffered, close everything."""
        if self.cluster is not None:
            self.cluster.stop_claiming()
        await self.scheduler.close()
        await self.retention.close()
        await self.listener.close()
        await self.engine.close()
        await self.registry.close()
        self.http.should_exit = True
        try:
            async with asyncio.timeout(5):
                await self._http_task
        except TimeoutError:
            self._http_task.cancel()
        await self.notifier.close()
        await self.writer.close()
        await self.pool.close()
        await self.store.call(self.store.disconnect_all_agents, self.store.owner)
        if self.cluster is not None:
            await self.cluster.close()
        self.store.close()


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the server process owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _tree_stamp(path: Path) -> tuple[tuple[str, float], ...]:
    if path.is_file():
        return ((str(path), path.stat().st_mtime),)
    return tuple(sorted((str(p), p.stat().st_mtime) for p in path.rglob("*") if p.is_file()))


async def serve(config: Settings) -> int:
    """Run a server until SIGINT/SIGTERM."""
    server = Server(config)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.stop)
    print(
        f"easytask server ready: {server.http_url} (agents on port {server.agents_port})",
        flush=True,
    )
    try:
        await server.wait()
    finally:
        log.info("stopping")
        await server.close()
    return 1 if server.fenced else 0
