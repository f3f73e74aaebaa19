"""Webhooks on job finish: a signed JSON POST, retried with exponential backoff, every try stored.

Each attempt checks its URL against the server's allowlist and the addresses its name resolves
to (`egress.WebhookTargets.pin`) and connects to the address it checked; redirects are never
followed. A refused URL is recorded as a failed attempt and not tried again."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from easytask import __version__
from easytask.scheduler.egress import WebhookRefused, WebhookTargets
from easytask.store.db import Store
from easytask.store.models import Job, Run, RunState, WebhookDelivery, as_utc
from easytask.store.serialize import iso_time

log = logging.getLogger("easytask.notify")

SIGNATURE_HEADER = "X-EasyTask-Signature"


@dataclass(frozen=True)
class Webhook:
    """Where to POST, and for which finished jobs: `all`, or `failed` (any end but success)."""

    url: str
    events: str = "all"

    def wants(self, state: str) -> bool:
        """Whether a job that ended in this state is notified."""
        return self.events == "all" or state != RunState.SUCCESS


def sign(secret: bytes, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def payload(job: Job, runs: list[Run], console_url: str) -> dict[str, Any]:
    """The JSON body that tells a receiver how a job ended."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.state] = counts.get(run.state, 0) + 1
    started = [as_utc(r.started_at) for r in runs if r.started_at is not None]
    return {
        "event": "job.finished",
        "job": job.id,
        "kind": job.kind,
        "name": job.name,
        "pattern": job.pattern,
        "status": job.state,
        "submitted_by": job.submitted_by,
        "counts": counts,
        "hosts": len(runs),
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(min(started)) if started else None,
        "finished_at": iso_time(job.finished_at),
        "url": f"{console_url.rstrip('/')}/jobs/{job.id}",
    }


class Notifier:
    """Sends finish notifications in named background tasks; close() stops them."""

    def __init__(
        self,
        store: Store,
        secret: bytes,
        console_url: str,
        *,
        default: Webhook | None = None,
        targets: WebhookTargets | None = None,
        attempts: int = 4,
        backoff: float = 1.0,
        timeout: float = 10.0,
        on_attempt: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.secret = secret
        self.console_url = console_url
        self.default = default
        self.targets = targets or WebhookTargets((), default.url if default else None)
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.on_attempt = on_attempt
        self._tasks: set[asyncio.Task[None]] = set()
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            headers={"user-agent": f"EasyTask/{__version__}"},
            # straight to the address checked: no proxy from the environment, and no
            # connection kept for another name that resolves to the same address
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    async def job_finished(self, job: Job) -> None:
        """Start delivering to every webhook that wants this job's end (returns at once)."""
        assert job.id is not None
        hooks = [self.default] if self.default else []
        if job.kind != "adhoc":  # only a playbook's `notify:` adds webhooks of its own
            rows = await self.store.call(self.store.job_webhooks, job.id)
            hooks += [Webhook(row.url, row.events) for row in rows]
        wanted = [h for h in hooks if h.wants(job.state)]
        if not wanted:
            return
        runs = await self.store.call(self.store.job_runs, job.id)
        body = json.dumps(payload(job, runs, self.console_url), sort_keys=True).encode()
        for hook in wanted:
            task = asyncio.create_task(
                self._deliver(job, hook.url, body), name=f"webhook-job-{job.id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def approval(self, event: str, job: Job, detail: dict[str, Any]) -> None:
        """Tell the server's webhook (`--webhook`) that a launch awaits approval or was decided:
        `approval.requested`, `approval.approved`, `approval.rejected`, `approval.expired`
        (returns at once; delivered, retried and recorded as a job's finish is)."""
        assert job.id is not None
        if self.default is None:
            return
        body = {
            "event": event,
            "job": job.id,
            "name": job.name,
            "pattern": job.pattern,
            "submitted_by": job.submitted_by,
            **detail,
            "url": f"{self.console_url.rstrip('/')}/jobs/{job.id}",
        }
        data = json.dumps(body, sort_keys=True, default=str).encode()
        task = asyncio.create_task(
            self._deliver(job, self.default.url, data, event), name=f"webhook-approval-{job.id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, job: Job, url: str, body: bytes, event: str = "job.finished") -> None:
        assert job.id is not None
        delivery = secrets.token_hex(8)
        headers = {
            "content-type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            "X-EasyTask-Event": event,
            "X-EasyTask-Delivery": delivery,
        }
        for attempt in range(1, self.attempts + 1):
            started = time.monotonic()
            status: int | None = None
            error = ""
            refused = False
            try:
                pinned, host, extensions = await self.targets.pin(url)
                resp = await self._client.post(
                    pinned, content=body, headers={**headers, **host}, extensions=extensions
                )
                status = resp.status_code
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except WebhookRefused as exc:
                error, refused = f"refused: {exc.message}", True
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            ok = not error
            row = WebhookDelivery(
                job_id=job.id,
                delivery=delivery,
                url=url,
                event=job.state if event == "job.finished" else event,
                attempt=attempt,
                ok=ok,
                status_code=status,
                error=error,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            await self.store.call(self.store.add_delivery, row)
            if self.on_attempt is not None:
                self.on_attempt(ok)
            if ok:
                log.info(
                    "job %s: webhook delivered to %s",
                    job.id,
                    url,
                    extra={"job": job.id, "url": url, "attempt": attempt},
                )
                return
            if refused:
                log.warning(
                    "job %s: webhook %s",
                    job.id,
                    error,
                    extra={"job": job.id, "url": url, "attempt": attempt},
                )
                return
            if attempt < self.attempts:
                delay = self.backoff * 2 ** (attempt - 1)
                log.warning(
                    "job %s: webhook to %s failed (%s); retry in %gs",
                    job.id,
                    url,
                    error,
                    delay,
                    extra={"job": job.id, "url": url, "attempt": attempt},
                )
                await asyncio.sleep(delay)
        log.error(
            "job %s: webhook to %s failed %d times; giving up",
            job.id,
            url,
            self.attempts,
            extra={"job": job.id, "url": url},
        )

    async def close(self, grace: float = 5.0) -> None:
        """Let deliveries in flight finish for a moment, then cancel them."""
        tasks = list(self._tasks)
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._client.aclose()
