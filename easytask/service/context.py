"""What the use cases work with: the parts of one running server, built and wired by server.py."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from easytask.config import Settings
from easytask.errors import Unavailable
from easytask.inventory import Inventory, load_inventory
from easytask.scheduler.agents import AgentRegistry
from easytask.scheduler.auditanchor import AuditAnchor
from easytask.scheduler.cluster import Cluster
from easytask.scheduler.egress import WebhookTargets
from easytask.scheduler.engine import JobEngine
from easytask.scheduler.hub import LiveHub
from easytask.scheduler.logwriter import LogWriter
from easytask.scheduler.metrics import Metrics
from easytask.scheduler.retention import Retention
from easytask.scheduler.schedules import Scheduler
from easytask.sealing import Keyring
from easytask.store.db import Store
from easytask.transport.agentlink import AgentListener
from easytask.transport.invscript import run_script
from easytask.vault import Vault

log = logging.getLogger("easytask.server")


class InventorySource:
    """The server's inventory sources, loaded again when a file of them changes and, when one is
    an inventory script, when its output is older than `cache` seconds."""

    def __init__(
        self,
        paths: str | list[str] | None,
        timeout: float = 30.0,
        cache: float = 30.0,
        vault: Vault | None = None,
    ) -> None:
        self.paths = [paths] if isinstance(paths, str) else list(paths or [])
        self.timeout = timeout
        self.cache = cache
        self.vault = vault
        self._inventory: Inventory | None = None
        self._stamp: Any = None
        self._ran_script = False
        self._loaded_at = 0.0
        self._lock = threading.Lock()  # one load at a time: a script runs once for many jobs

    def now(self, rerun_scripts: bool = True) -> Inventory:
        """The inventory as its files (and scripts) are now (an empty one without sources);
        without `rerun_scripts`, a script's output is kept however old it is (a background
        reader must not run it when no job asks)."""
        with self._lock:
            sources = [p for p in self.paths if is_host_list(p) or Path(p).exists()]
            stamp = tuple(tree_stamp(Path(p)) for p in sources if not is_host_list(p))
            fresh = not self._ran_script or time.monotonic() - self._loaded_at < self.cache
            fresh = fresh or (not rerun_scripts and self._inventory is not None)
            if self._inventory is None or stamp != self._stamp or not fresh:
                self._ran_script = False
                self._inventory = None  # a failed load is tried again by the next job
                self._inventory = load_inventory(sources, scripts=self._run, vault=self.vault)
                self._stamp = stamp
                self._loaded_at = time.monotonic()
            return self._inventory

    def _run(self, path: str, args: Sequence[str]) -> bytes | None:
        self._ran_script = True
        return run_script(path, args, self.timeout)

    def hostvars(self, host: str) -> dict[str, Any]:
        """The variables of a host the inventory lists (none for another host)."""
        inventory = self.now()
        if host in inventory.hosts:
            return inventory.host_vars(host)
        return {}


def is_host_list(source: str) -> bool:
    """`web1,web2,`: hosts named on the command line, not a path."""
    return "," in source and not os.path.exists(source)


def tree_stamp(path: Path) -> tuple[tuple[str, float], ...]:
    """The files of a path with their modification times: changes when one changes."""
    if path.is_file():
        return ((str(path), path.stat().st_mtime),)
    return tuple(sorted((str(p), p.stat().st_mtime) for p in path.rglob("*") if p.is_file()))


@dataclass
class Services:
    """The parts of one server that the use cases and the web layer need."""

    settings: Settings
    state_dir: Path
    server_id: str
    pending_timeout: float
    vault: Vault  # the Ansible Vault passwords, read at start
    store: Store
    writer: LogWriter
    hub: LiveHub
    registry: AgentRegistry
    engine: JobEngine
    metrics: Metrics
    listener: AgentListener
    inventory: InventorySource
    scheduler: Scheduler
    retention: Retention
    audit_anchor: AuditAnchor
    webhooks: WebhookTargets  # where a playbook's `notify:` may point
    keyring: Keyring  # seals and opens the credential store's values
    cluster: Cluster | None = None  # set when the server joins others on a shared database
    # `agents bootstrap` runs under way or ended on this server (id -> its progress)
    bootstraps: dict[str, Any] = field(default_factory=dict)
    # told when a template launch awaits approval or is decided (service.templates.ApprovalHook)
    approval_hook: Any = None

    async def merged_inventory(self) -> Inventory:
        """The inventory plus the accepted agents it does not list; a host with an agent of
        its name online on this server goes through that agent (docs/agents.md, bootstrap). Its
        `agent_hosts` are the hosts with an enrolled agent (any state), which
        `easytask_connection: auto` reaches through their agent; its hosts of
        `ansible_connection: local` run on this server's host if the admin allows it."""
        inventory = await asyncio.to_thread(self.inventory.now)
        online = {name for name, info in self.registry.agents.items() if info.online}
        merged = inventory.with_extra_hosts(
            self.registry.declared_hosts(),
            facts=self.registry.declared_facts(),
            via_agent=online,
            agents=self.registry.agents,
        )
        merged.local_allowed = self.settings.allow_local_connection
        return merged

    async def live_servers(self) -> set[str]:
        """Ids of the servers sharing the database whose heartbeat is recent (this one too)."""
        if self.cluster is None:
            return {self.store.owner}
        return await self.cluster.live_servers()

    async def ready(self) -> dict[str, str]:
        """What /readyz checks: the database answers (and, after a fault such as a full disk,
        has stored a write since), the agent listener is up. Empty if ready."""
        problems: dict[str, str] = {}
        try:
            async with asyncio.timeout(5):
                await self.store.call(self.store.ping)
        except Unavailable:
            problems["database"] = "not ready"  # the store logged the outage when it began
        except Exception as exc:
            log.warning("not ready: the database does not answer: %s: %s", type(exc).__name__, exc)
            problems["database"] = "not ready"
        known = self.store.health.problem()
        if known is not None:
            problems["database"] = known
        if not self.listener.listening:
            problems["agent_listener"] = "not listening"
        return problems

    def output_buffer(self) -> dict[str, int]:
        """Output waiting for the database, and the limit at which runs stop being read."""
        writer = self.writer
        return {
            "lines": writer.backlog,
            "bytes": writer.backlog_bytes,
            "limit_lines": writer.limit_lines,
            "limit_bytes": writer.limit_bytes,
        }

    async def audit(self, actor: str, action: str, source: str, detail: dict[str, Any]) -> None:
        """Append an event to the audit chain on its own (for an event that changes nothing)."""
        await self.store.call(self.store.audit, actor, action, source, detail)
