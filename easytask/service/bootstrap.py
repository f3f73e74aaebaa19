"""`easytask agents bootstrap`: turn agentless hosts into agent hosts, through their SSH.

The server does the work (POST /api/agents/bootstrap starts it, GET follows it): for each host
the pattern selects it connects as its agentless runs do, installs the agent into a venv under a
per-host prefix (the server's own wheel sent over SFTP, or `easytask==VERSION` from an index the
host reaches), mints a one-use enrolment token with a short life and writes it to a 0600 file
over SFTP, starts the agent (systemd unit or detached process) and waits until it is online.
A host whose name already has an online agent is left as it is ("already an agent").
Progress lives in this server's memory (`Services.bootstraps`); the start is audited
(`agent.bootstrap`), each token too (`agent.token`, in the token's transaction).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import asyncssh

from easytask import __version__
from easytask.errors import APIError, ConnectError, EasyTaskError
from easytask.names import BadName, check_labels, check_name
from easytask.service.context import Services
from easytask.service.credentials import host_credentials
from easytask.store.audit import AuditNote
from easytask.store.models import AgentState, User
from easytask.transport import bootstrap as host_steps
from easytask.transport.bootstrap import BootstrapError, HostPlan

DEFAULT_PREFIX = "/opt/easytask-agent"
PREFIX_VAR = "easytask_agent_prefix"  # an inventory variable: this host's own prefix
PARALLEL = 8  # hosts bootstrapped at once
KEEP = 50  # finished bootstraps kept for GET
_PLAIN_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
_INDEX_URL = re.compile(r"^(https?|file)://[A-Za-z0-9._~:/?#\[\]@!$&()*+,;=%-]+$")
_SERVER_PART = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):[0-9]{1,5}$")
_wheel_lock = asyncio.Lock()


@dataclass
class HostProgress:
    """One host of a bootstrap: its state and what was done, line by line."""

    name: str
    state: str = "waiting"  # waiting, working, done, already, failed
    steps: list[str] = field(default_factory=list)
    reason: str = ""

    def view(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "steps": self.steps, "reason": self.reason}


@dataclass
class Bootstrap:
    """One `agents bootstrap` on this server."""

    id: str
    actor: str
    pattern: str
    hosts: dict[str, HostProgress]
    done: bool = False
    task: asyncio.Task[None] | None = None

    def view(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pattern": self.pattern,
            "done": self.done,
            "hosts": [h.view() for h in self.hosts.values()],
        }


@dataclass(frozen=True)
class Request:
    """A checked bootstrap request."""

    pattern: str
    limit: str | None
    prefix: str
    index_url: str
    server: str
    timeout: float


def check_request(services: Services, data: dict[str, Any]) -> Request:
    """The request's fields, each checked; 400 naming the first bad one."""
    pattern = data.get("pattern")
    if not isinstance(pattern, str) or not pattern.strip():
        raise APIError("pattern: name the hosts to bootstrap (a host pattern)")
    limit = data.get("limit") or None
    if limit is not None and not isinstance(limit, str):
        raise APIError("limit must be a host pattern")
    prefix = data.get("prefix") or DEFAULT_PREFIX
    check_prefix(prefix, "prefix")
    index_url = data.get("index_url") or ""
    if not isinstance(index_url, str) or (index_url and not _INDEX_URL.match(index_url)):
        raise APIError(f"index_url {index_url!r} is not an http(s):// or file:// URL")
    server = data.get("server") or default_server(services)
    if not isinstance(server, str) or not all(
        _SERVER_PART.match(p) and 0 < int(p.rpartition(":")[2]) < 65536 for p in server.split(",")
    ):
        raise APIError(f"server {server!r}: not HOST:PORT[,HOST:PORT...] (the agent port)")
    timeout = data.get("timeout", 120)
    if not isinstance(timeout, int | float) or not 5 <= timeout <= 3600:
        raise APIError("timeout must be a number of seconds from 5 to 3600")
    return Request(pattern.strip(), limit, prefix, index_url, server, float(timeout))


def check_prefix(value: object, what: str) -> str:
    """An absolute path of plain characters (it goes into commands, a script and a unit)."""
    if (
        not isinstance(value, str)
        or not _PLAIN_PATH.match(value)
        or "/../" in value + "/"
        or value.rstrip("/") == ""
    ):
        raise APIError(
            f"{what} {value!r}: give an absolute directory of letters, digits and '._/@+-'"
        )
    return value.rstrip("/")


def default_server(services: Services) -> str:
    """The agent port the server listens on, unless it listens on every address (then the
    request must say which address the hosts reach)."""
    listen = services.settings.agents
    host, _, port = listen.rpartition(":")
    if services.listener.port:  # the port bound (the setting may say 0: any free port)
        port = str(services.listener.port)
    listen = f"{host}:{port}"
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        raise APIError(
            f"server: this server listens for agents on {listen}; name the address the hosts "
            "reach it at (--server HOST:PORT)"
        )
    return listen


async def find_wheel(services: Services) -> Path:
    """The server's own wheel: `STATE_DIR/wheels/easytask-VERSION-py3-none-any.whl`, built
    once from the source tree the server runs from when it is not there yet."""
    wheels = services.state_dir / "wheels"
    wanted = wheels / f"easytask-{__version__}-py3-none-any.whl"
    async with _wheel_lock:
        if wanted.is_file():
            return wanted
        tree = Path(__file__).resolve().parent.parent.parent
        if not (tree / "pyproject.toml").is_file():
            raise APIError(
                f"no agent wheel: put {wanted.name} into {wheels} (pip download "
                f"--no-deps easytask=={__version__}), or install from an index (--index-url)",
                status=409,
            )
        wheels.mkdir(parents=True, exist_ok=True)
        result = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
            + ["-w", str(wheels), str(tree)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0 or not wanted.is_file():
            raise APIError(
                f"building the agent wheel from {tree} failed: {result.stderr.strip()[-400:]}",
                status=409,
            )
        return wanted


async def start_bootstrap(
    services: Services, user: User, source: str, data: dict[str, Any]
) -> Bootstrap:
    """Check the request and the hosts, audit it, and start working (in the background)."""
    req = check_request(services, data)
    merged = await services.merged_inventory()
    inventory = await asyncio.to_thread(services.inventory.now)
    try:
        names = merged.select(req.pattern)
        if req.limit:
            allowed = set(merged.select(req.limit))
            names = [n for n in names if n in allowed]
    except EasyTaskError as exc:
        raise APIError(str(exc)) from exc
    if not names:
        raise APIError(f"no host of {req.pattern!r} is in --limit {req.limit!r}")
    plans: dict[str, HostPlan] = {}
    hostvars: dict[str, dict[str, Any]] = {}
    progress: dict[str, HostProgress] = {}
    for name in names:
        info = services.registry.agents.get(name)
        progress[name] = HostProgress(name)
        if info is not None and info.online:
            # already an agent: checked to be this host's (its SSH, if it has one), no more
            if name in inventory.hosts:
                hv = inventory.host_vars(name)
                if str(hv.get("easytask_connection", "auto")) in ("ssh", "auto"):
                    hostvars[name] = hv
            continue
        try:
            check_name(name)
        except BadName as exc:
            raise APIError(f"host {name!r} cannot be an agent: {exc}") from exc
        hv = inventory.host_vars(name) if name in inventory.hosts else {}
        if str(hv.get("easytask_connection", "auto")) not in ("ssh", "auto"):
            raise APIError(
                f"host {name!r} is not an agentless host: bootstrap reaches a host over SSH "
                "(easytask_connection=ssh with its ansible_* variables in the inventory)"
            )
        prefix = check_prefix(hv.get(PREFIX_VAR) or req.prefix, f"host {name}: prefix")
        groups = [g for g in inventory.host_groups(name) if g not in ("all", "ungrouped")]
        try:
            labels = tuple(check_labels(groups))
        except BadName:
            labels = tuple(g for g in groups if _label_ok(g))
        hostvars[name] = hv
        plans[name] = HostPlan(
            name=name,
            server=req.server,
            prefix=PurePosixPath(prefix),
            groups=labels,
            index_url=req.index_url,
            version=__version__,
        )
    prefixes = [(hostvars[n].get("ansible_host") or n, str(p.prefix)) for n, p in plans.items()]
    if len(set(prefixes)) < len(prefixes):
        raise APIError(
            "two hosts of the pattern reach the same address with the same prefix: give each "
            f"its own ({PREFIX_VAR} in the inventory)"
        )
    wheel = await find_wheel(services) if plans and not req.index_url else None
    what = {"kind": "agents.bootstrap", "pattern": req.pattern}
    keys = await host_credentials(services, user, source, hostvars, what) if hostvars else None
    boot = Bootstrap(secrets.token_hex(6), user.name, req.pattern, progress)
    await services.audit(
        user.name,
        "agent.bootstrap",
        source,
        {
            "bootstrap": boot.id,
            "pattern": req.pattern,
            "limit": req.limit,
            "hosts": sorted(plans),
            "already": sorted(set(names) - set(plans)),
            "server": req.server,
            "prefix": req.prefix,
            "index_url": req.index_url,
            "wheel": wheel.name if wheel else None,
        },
    )
    ended = [b for b in services.bootstraps.values() if b.done]
    for old in ended[: max(0, len(ended) - KEEP)]:
        services.bootstraps.pop(old.id, None)
    services.bootstraps[boot.id] = boot
    ssh_keys = keys.ssh_keys if keys else {}
    boot.task = asyncio.create_task(
        _run_all(services, boot, plans, hostvars, ssh_keys, wheel, req, source),
        name=f"bootstrap {boot.id}",
    )
    return boot


def _label_ok(label: str) -> bool:
    try:
        check_name(label, "group label")
    except BadName:
        return False
    return True


def get_bootstrap(services: Services, bootstrap_id: str) -> Bootstrap:
    """A bootstrap of this server, or 404."""
    boot = services.bootstraps.get(bootstrap_id)
    if boot is None:
        raise APIError(
            f"no bootstrap {bootstrap_id!r} on this server (progress is kept by the server "
            "that started it)",
            status=404,
        )
    return boot


async def _run_all(
    services: Services,
    boot: Bootstrap,
    plans: dict[str, HostPlan],
    hostvars: dict[str, dict[str, Any]],
    ssh_keys: dict[str, str],
    wheel: Path | None,
    req: Request,
    source: str,
) -> None:
    limit = asyncio.Semaphore(PARALLEL)

    async def one(name: str) -> None:
        host = boot.hosts[name]
        plan = plans.get(name)
        if plan is None:
            async with limit:
                await _already(services, host, hostvars.get(name), ssh_keys)
            return
        async with limit:
            host.state = "working"
            try:
                await _one_host(
                    services, boot, host, plan, hostvars[name], ssh_keys, wheel, req, source
                )
            except BootstrapError as exc:
                _fail(host, str(exc))
            except TimeoutError:
                _fail(host, "timeout: a step on the host did not finish in time")
            except (OSError, asyncssh.Error) as exc:
                _fail(host, f"ssh: {exc or type(exc).__name__}")
            except Exception as exc:  # reported, not lost: the others go on
                _fail(host, f"unexpected error: {type(exc).__name__}: {exc}")

    try:
        await asyncio.gather(*(one(n) for n in boot.hosts))
    finally:
        boot.done = True


async def _already(
    services: Services,
    host: HostProgress,
    hv: dict[str, Any] | None,
    ssh_keys: dict[str, str],
) -> None:
    """A host whose name has an online agent: nothing is changed. Where the host is reached
    over SSH too, its host name (`uname -n`) must be the one the agent reports: an agent of the
    same name on another machine is a failure, not a host done."""
    name = host.name
    info = services.registry.agents.get(name)
    reported = str((info.facts if info else {}).get("hostname") or "")
    if hv is None or not reported:
        host.state = "already"
        host.steps.append("already an agent: online under this name; nothing changed")
        return
    try:
        conn = await services.engine.execution.ssh_connection(name, hv, ssh_keys.get(name))
        async with asyncio.timeout(30):
            result = await conn.run("uname -n", check=False)
        seen = str(result.stdout or "").strip()
    except (ConnectError, TimeoutError, OSError, asyncssh.Error) as exc:
        host.state = "already"
        host.steps.append(
            f"already an agent: online under this name; nothing changed (the host was not "
            f"checked over SSH: {exc or type(exc).__name__})"
        )
        return
    if seen != reported:
        _fail(
            host,
            f"an agent named {name} is online from another machine (it reports host name "
            f"{reported!r}, this host is {seen!r}): revoke or delete it first",
        )
        return
    host.state = "already"
    host.steps.append(
        f"already an agent: online under this name on this host ({seen}); nothing changed"
    )


async def close_bootstraps(services: Services) -> None:
    """The server stops: bootstraps under way end, their unfinished hosts failed."""
    tasks = [b.task for b in services.bootstraps.values() if b.task and not b.task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    for boot in services.bootstraps.values():
        for host in boot.hosts.values():
            if host.state in ("waiting", "working"):
                _fail(host, "the server stopped before this host was done")


def _fail(host: HostProgress, reason: str) -> None:
    host.state = "failed"
    host.reason = reason
    host.steps.append(f"failed: {reason}")


async def _one_host(
    services: Services,
    boot: Bootstrap,
    host: HostProgress,
    plan: HostPlan,
    hv: dict[str, Any],
    ssh_keys: dict[str, str],
    wheel: Path | None,
    req: Request,
    source: str,
) -> None:
    name = plan.name
    try:
        conn = await services.engine.execution.ssh_connection(name, hv, ssh_keys.get(name))
    except ConnectError as exc:
        raise BootstrapError(f"ssh unreachable: {exc}") from exc
    host.steps.append("connected over SSH")
    found = await host_steps.probe(conn)
    host.steps.append(
        f"python3 {found.version[0]}.{found.version[1]} at {found.python}; "
        f"the agent will run as a {found.how} process"
        if found.how == "detached"
        else f"python3 {found.version[0]}.{found.version[1]} at {found.python}; systemd runs here"
    )
    installed = await host_steps.install(conn, plan, found, wheel)
    host.steps.append(f"installed into {plan.venv} from {installed}")
    store = services.store
    ttl = req.timeout + 60
    note = AuditNote(
        boot.actor,
        "agent.token",
        source,
        {"bootstrap": boot.id, "uses": 1, "ttl": ttl, "agent": name},
    )
    token = await store.call(store.create_enroll_token, 1, ttl, boot.actor, note)
    await host_steps.write_token(conn, plan, token)
    del token
    host.steps.append(f"one-use enrolment token written to {plan.token_file} (0600)")
    how = await host_steps.start(conn, plan, found.how)
    host.steps.append(f"started: {how}")
    end = time.monotonic() + req.timeout
    while True:
        info = services.registry.agents.get(name)
        if info is not None and info.online:
            break
        if info is not None and info.state == AgentState.PENDING:
            raise BootstrapError(
                "the agent is pending, not accepted: its name already had a record, so the "
                f"token was not used (easytask agents accept {name})"
            )
        if info is not None and info.state == AgentState.REVOKED:
            raise BootstrapError(f"the agent name {name} is revoked")
        if time.monotonic() > end:
            why = await host_steps.agent_log(conn, plan, found.how)
            raise BootstrapError(
                f"timeout: the agent was not online after {req.timeout:g}s"
                + (f"; its log: {why}" if why else "")
            )
        await asyncio.sleep(0.2)
    await host_steps.remove_token(conn, plan)
    host.state = "done"
    host.steps.append("online and accepted (the token is spent; its file removed)")
