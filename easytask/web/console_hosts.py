"""The console's host page: one agent's facts, recent runs, link history and 24 h charts."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import AuditEvent, User, as_utc, utcnow
from easytask.web.console import Console
from easytask.web.errors import PageError
from easytask.web.format import run_row

RECENT_RUNS = 30
LINK_HISTORY = 50
LINK_TEXT = {
    "agent.online": "connected",
    "agent.lost": "link lost",
    "agent.enroll": "enrolled by token",
    "agent.reenroll": "new key, waiting for an admin",
    "agent.pending": "asked to join, waiting for an admin",
    "agent.accept": "accepted",
    "agent.revoke": "revoked",
    "agent.refused": "refused",
    "agent.delete": "deleted",
}


def fact_rows(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """An agent's facts as (name, text) rows, by name; nested values as compact JSON."""
    rows = []
    for key in sorted(facts):
        value = facts[key]
        if isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, sort_keys=True, separators=(", ", ": "), default=str)
        rows.append((str(key), text))
    return rows


def link_row(event: AuditEvent) -> dict[str, Any]:
    """One line of an agent's link history."""
    detail = json.loads(event.detail)
    reason = detail.get("reason") or ""
    return {
        "at": as_utc(event.at),
        "action": event.action,
        "text": LINK_TEXT.get(event.action, event.action),
        "reason": str(reason),
        "by": event.actor if event.action in ("agent.accept", "agent.revoke") else "",
        "source": event.source,
    }


class HostPages:
    """GET /agents/{name}: one agent's page."""

    def __init__(self, services: Services, console: Console) -> None:
        self.services = services
        self.console = console

    async def host_page(self, request: Request, user: User) -> Response:
        """GET /agents/{name}: facts, recent runs and outcomes, link history, 24 h charts."""
        name = request.path_params["name"]
        reader = await Reader.of(self.services, user)
        view = next((v for v in await reader.agents() if v.row.name == name), None)
        if view is None:  # outside the user's scope: not found either
            raise PageError(f"no agent {name!r}", status=404)
        store = self.services.store
        runs = [
            r for r in await store.call(store.agent_runs, name, RECENT_RUNS) if reader.sees(r.host)
        ]
        since = utcnow() - timedelta(days=30)
        links = await store.call(store.agent_link_events, name, since, LINK_HISTORY)
        load = view.facts.get("load") or []
        return self.console.render(
            request,
            user,
            "host.html",
            section="agents",
            agent={
                "name": view.row.name,
                "status": view.status,
                "address": view.row.address,
                "version": view.row.version,
                "last_seen": view.row.last_seen,
                "since": view.row.state_since,
                "slots": view.row.slots,
                "running": view.running,
                "groups": view.groups,
                "load": load[0] if load else None,
                "cpus": view.facts.get("cpus") or view.facts.get("cpu_count") or "",
            },
            facts=fact_rows(view.facts),
            runs=[run_row(r) for r in runs],
            outcomes=sorted(Counter(r.state for r in runs).items()),
            links=[link_row(e) for e in links],
        )

    def routes(self) -> list[Route]:
        """The host page route."""
        return [Route("/agents/{name}", self.console.page(self.host_page))]
