"""`easytask server`: the store, the agent listener, the job engine and the web app in one process."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import logging
import os
import secrets
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import uvicorn

from easytask import __version__
from easytask.config import Settings
from easytask.errors import ConfigError, StartError
from easytask.gcpace import STEP_EVERY, Pacer
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.auditanchor import AuditAnchor, CheckpointWebhook
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.egress import WebhookRefused, WebhookTargets, parse_url
from easytask.scheduler.engine import JobEngine
from easytask.scheduler.hostmetrics import HostMetrics
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter, buffer_limits
from easytask.scheduler.metrics import Metrics
from easytask.scheduler.notify import Notifier, Webhook
from easytask.scheduler.retention import Retention
from easytask.scheduler.schedules import Scheduler
from easytask.sealing import load_keyring, settle_rotation
from easytask.service.approvals import approval_dict, expire_approvals
from easytask.service.bootstrap import close_bootstraps
from easytask.service.busy import LimitsWatch
from easytask.service.context import InventorySource, Services
from easytask.service.jobs import submit_scheduled
from easytask.service.planning import resume_playbook_job
from easytask.service.schedules import fire_stored
from easytask.statefiles import load_or_create_secret
from easytask.store import checkpoints, schema
from easytask.store.audit import hashed_with_another_key
from easytask.store.db import Store, safe_url, sqlite_url
from easytask.store.models import Job, JobApproval, Schedule
from easytask.transport import sshlog
from easytask.transport.agentless import SSHPool
from easytask.transport.agentlink import AgentListener, raise_open_files
from easytask.transport.keys import load_or_create_key
from easytask.vaultpass import load_vault
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
        # the vault passwords are read (their scripts run) once, at start
        self.vault = load_vault(config.vault_password_file, config.vault_id)
        self.inventory = InventorySource(
            config.inventory, config.inventory_timeout, config.inventory_cache, self.vault
        )
        self._stop = asyncio.Event()
        self._gc_timer: asyncio.TimerHandle | None = None
        self._gc_unhook: Callable[[], None] | None = None
        self.cluster: Cluster | None = None
        self.fenced = False  # another server took this one's work over: stop, exit 1
        self.http_port = 0
        self.agents_port = 0

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, start the writer, the agent listener and the web server."""
        self.webhook_targets = WebhookTargets(
            self.config.notify_allow or (), self.config.notify_url
        )
        checkpoint_hook = None
        if self.config.audit_checkpoint_url:
            try:
                parse_url(self.config.audit_checkpoint_url, credentials=True)
            except WebhookRefused as exc:
                raise ConfigError(f"audit_checkpoint_url: {exc.message}") from exc
            checkpoint_hook = CheckpointWebhook(self.config.audit_checkpoint_url)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state_dir, 0o700)
        url = self.config.db or sqlite_url(self.state_dir / "easytask.db")
        self.store = Store(url)
        self.store.owner = self._instance_id()
        created = await self.store.call(schema.prepare, self.store.engine, url)
        if created == "created":
            log.info("created the database schema in %s", safe_url(url))
        key_file = self.config.audit_key_file or self.state_dir / checkpoints.KEY_FILE
        audit_key = load_or_create_secret(Path(key_file))
        self.store.use_audit_key(audit_key)
        _, head_hash = await self.store.call(self.store.audit_head)
        if hashed_with_another_key(audit_key, head_hash):
            log.warning(
                "the audit chain's last event was hashed with another key than %s: servers "
                "sharing a database must share one audit key file (--audit-key-file)",
                key_file,
            )
        stored = await self.store.call(self.store.list_credentials)
        settled = settle_rotation(self.state_dir, {c.key_id for c in stored})
        if settled:
            log.info("the credential key rotation a stopped server left was %s", settled)
        self.keyring = load_keyring(self.state_dir, self.config.secret_key)
        foreign = sorted(c.name for c in stored if not self.keyring.opens(c.key_id))
        if foreign:
            log.warning(
                "credential(s) %s were sealed with another key than this server's (%s): servers "
                "sharing a database must share one credential key",
                ", ".join(foreign),
                self.keyring.key_id,
            )
        self.audit_anchor = AuditAnchor(
            self.store,
            checkpoints.open_log(self.state_dir, self.store.owner),
            webhook=checkpoint_hook,
        )
        await self.audit_anchor.start()
        self.admin_token = await self._ensure_admin()
        self.writer = LogWriter(self.store, **buffer_limits(self.config.log_buffer))
        self.writer.start()
        # agents record the lasting id of the server holding them (servers share the database)
        self.registry = AgentRegistry(self.store, self.hub, self.store.owner)
        self.registry.pending_max = self.config.agents_pending_max
        await self.registry.load()
        raw_retention = self.config.metrics_raw_retention
        self.hostmetrics = HostMetrics(
            self.store, raw_retention, rollup_interval=min(60.0, max(1.0, raw_retention / 4))
        )
        self.registry.on_online.append(
            lambda name: self.hostmetrics.follow(name, self.registry.agents[name].link)
        )
        self.hostmetrics.start()
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
        self.engine.execution.allow_local = self.config.allow_local_connection
        if self.config.allow_local_connection:
            log.warning(
                "allow_local_connection is on: hosts with `ansible_connection: local` run their "
                "commands on this host as %s",
                getpass.getuser(),
            )
        self.engine.output_limit = self.config.output_limit or None
        self.engine.on_run_started.append(self.metrics.run_started)
        self.notifier = Notifier(
            self.store,
            self._webhook_secret(),
            self.config.public_url or "",
            default=Webhook(self.config.notify_url, self.config.notify_events)
            if self.config.notify_url
            else None,
            targets=self.webhook_targets,
            on_attempt=self.metrics.webhook_attempt,
        )
        self.engine.on_job_finished.append(self._job_finished)
        self.engine.secrets_dir = self.state_dir / "secrets"
        client_key = load_or_create_key(self.state_dir / "client_key")
        self.client_public_key = client_key.export_public_key("openssh").decode().strip()
        open_files, max_links = raise_open_files()
        log.info("open-file limit %d: room for %d agent links", open_files, max_links)
        self.listener = AgentListener(
            self.registry,
            client_key,
            self.config.keepalive_interval,
            self.config.keepalive_count,
            handshakes=self.config.agents_handshakes,
            max_links=max_links,
            open_files=open_files,
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
        self.scheduler = Scheduler(
            self.store,
            Path(self.config.playbooks) if self.config.playbooks else None,
            self._submit_scheduled,
            self.server_id,
            interval=self.config.schedule_interval,
            vault=self.vault,
            submit_stored=self._fire_stored,
        )
        self.retention = Retention(
            self.store,
            self.config.retention,
            self.config.retention_failed,
            self.config.prune_interval,
            state_dir=self.state_dir,
        )
        self.services = Services(
            settings=self.config,
            state_dir=self.state_dir,
            server_id=self.server_id,
            pending_timeout=self.pending_timeout,
            vault=self.vault,
            store=self.store,
            writer=self.writer,
            hub=self.hub,
            registry=self.registry,
            engine=self.engine,
            metrics=self.metrics,
            listener=self.listener,
            inventory=self.inventory,
            scheduler=self.scheduler,
            retention=self.retention,
            audit_anchor=self.audit_anchor,
            webhooks=self.webhook_targets,
            keyring=self.keyring,
            approval_hook=self._approval_event,
        )
        self.limits = LimitsWatch(self.services)
        self.registry.on_online.append(self.limits.wake)
        self.limits.start()
        self.app = await create_web_app(self.services)
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
        self.scheduler.start()
        self.retention.start()
        inflight = self.engine.inflight
        # the links' objects out of every full collection's way; everything swept when quiet
        pacer = Pacer(busy=lambda: bool(inflight.live or inflight.claimed))
        self._gc_unhook = pacer.between_steps()
        self._pace_gc(pacer)
        self._approval_task = asyncio.create_task(self._expire_approvals(), name="approvals")
        counts = await self.engine.resume(self.inventory.hostvars, self._resume_playbook)
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
        self.registry.on_online.append(cluster.agent_online)
        self.registry.on_changed.append(lambda name: cluster.notify("agent", name=name))
        self.writer.on_written.append(cluster.lines_written)
        cluster.writer = self.writer
        cluster.on_fenced.append(self._fenced)

        async def take_over(server: str, jobs: list[int]) -> None:
            await self.engine.resume(
                self.inventory.hostvars,
                self._resume_playbook,
                job_ids=jobs,
                why=f"server {server} stopped",
            )

        cluster.on_take_over.append(take_over)
        await cluster.start(self.http_url, agents_addr, self.server_id)
        self.cluster = cluster
        self.services.cluster = cluster

    def _fenced(self) -> None:
        # The server that took over re-attached from what was stored: lines still buffered
        # here would be stored twice, so they are dropped, and this process stops.
        self.fenced = True
        self.writer.fence()
        self.stop()

    async def _submit_scheduled(self, path: Path, name: str) -> int:
        return await submit_scheduled(self.services, path, name)

    async def _fire_stored(self, row: Schedule) -> int:
        return await fire_stored(self.services, row)

    async def _resume_playbook(self, job: Job) -> int:
        return await resume_playbook_job(self.services, job)

    async def _approval_event(self, event: str, job: Job, approval: JobApproval) -> None:
        await self.notifier.approval(event, job, approval_dict(approval))

    async def _expire_approvals(self) -> None:
        """Expire template launches that waited too long for approval, every so often."""
        every = min(max(self.config.approval_expiry / 4, 1.0), 60.0)
        while True:
            await asyncio.sleep(every)
            try:
                await expire_approvals(self.services, self._approval_event)
            except Exception:  # the next round tries again
                log.exception("expiring approvals failed")

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
        token = await self.store.call(
            self.store.create_api_token,
            "admin",
            "initial admin token",
            self.config.token_max_ttl,
        )
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

    def _pace_gc(self, pacer: Pacer) -> None:
        pacer.step()
        self._gc_timer = asyncio.get_running_loop().call_later(STEP_EVERY, self._pace_gc, pacer)

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
        if self._gc_timer is not None:
            self._gc_timer.cancel()
        if self._gc_unhook is not None:
            self._gc_unhook()
            self._gc_unhook = None
        task = getattr(self, "_approval_task", None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.hostmetrics.close()
        await close_bootstraps(self.services)
        await self.limits.close()
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
        await self.audit_anchor.close()
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
