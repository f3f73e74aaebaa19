"""The API of agents and hosts: list, accept, revoke, delete, approve or withdraw group labels,
enrolment tokens, what a pattern matches."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from easytask.durations import parse_duration
from easytask.errors import APIError
from easytask.service import agents, bootstrap, hostmetrics
from easytask.service.context import Services
from easytask.service.planning import plan_pattern
from easytask.service.reading import Reader
from easytask.store.models import User
from easytask.web.requests import ApiRequests, body, source


class AgentsApi:
    """/api/agents and /api/hosts."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def list_agents(self, request: Request, user: User) -> Response:
        """GET /api/agents: every agent with its state and facts (of the hosts a scoped user
        may read; agents that were refused only for users without a scope)."""
        reader = await Reader.of(self.services, user)
        out = []
        for view in await reader.agents():
            row = view.row
            out.append(
                {
                    "name": row.name,
                    "state": row.state,
                    "status": view.status,
                    "busy": view.busy,
                    "fingerprint": row.fingerprint,
                    "address": row.address,
                    "server": row.server if row.connected else "",
                    "version": row.version,
                    "labels": view.labels,
                    "groups": view.groups,
                    "pending": view.pending,
                    "approved": view.approved,
                    "slots": row.slots,
                    "running": view.running,
                    "facts": view.facts,
                    "last_seen": row.last_seen.isoformat() if row.last_seen else None,
                    "since": row.state_since.isoformat() if row.state_since else None,
                }
            )
        refused = [] if reader.scoped else self.services.registry.refused[-20:]
        return JSONResponse({"agents": out, "refused": refused})

    async def metrics(self, request: Request, user: User) -> Response:
        """GET /api/agents/{name}/metrics?since=&until=&resolution=: the agent's host samples
        as columns (docs/api.md)."""
        query = request.query_params
        data = await hostmetrics.agent_metrics(
            self.services,
            user,
            request.path_params["name"],
            since=query.get("since"),
            until=query.get("until"),
            resolution=query.get("resolution"),
        )
        return JSONResponse(data)

    async def recent_metrics(self, request: Request, user: User) -> Response:
        """GET /api/agents/metrics/recent?minutes=60: every agent's CPU over the last minutes,
        a point per minute and the newest sample, for the agents page's sparklines."""
        data = await hostmetrics.recent_cpu(
            self.services, user, request.query_params.get("minutes")
        )
        return JSONResponse(data)

    async def set_agent_state(self, request: Request, user: User) -> Response:
        """POST /api/agents/{name}/accept|revoke|delete|approve|withdraw; all but delete take
        an optional `fingerprint` (409 if the agent holds another key); approve and withdraw
        take `groups`, the labels (a list)."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        data = await body(request)
        if action == "delete":
            row = await agents.delete_agent(self.services, user.name, source(request), name)
            return JSONResponse({"name": name, "state": "deleted", "fingerprint": row.fingerprint})
        fingerprint = data.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise APIError("fingerprint must be a string like SHA256:...")
        if action in agents.LABEL_ACTIONS:
            row = await agents.set_agent_labels(
                self.services,
                user.name,
                source(request),
                name,
                action,
                data.get("groups"),
                fingerprint,
            )
            return JSONResponse(
                {
                    "name": name,
                    "state": row.state,
                    "fingerprint": row.fingerprint,
                    "approved": [g for g in row.approved_groups.split(",") if g],
                }
            )
        row = await agents.set_agent_state(
            self.services, user.name, source(request), name, action, fingerprint
        )
        return JSONResponse({"name": name, "state": row.state, "fingerprint": row.fingerprint})

    async def enroll_token(self, request: Request, user: User) -> Response:
        """POST /api/agents/tokens: a new enrolment token (uses, ttl)."""
        data = await body(request)
        try:
            uses = int(data.get("uses") or 1)
        except (TypeError, ValueError) as exc:
            raise APIError(f"uses: {exc}") from exc
        try:
            ttl = parse_duration(data["ttl"]) if data.get("ttl") else None
        except (TypeError, ValueError) as exc:
            raise APIError(f"ttl: {exc}") from exc
        token = await agents.create_enroll_token(
            self.services, user.name, source(request), uses, ttl
        )
        return JSONResponse({"token": token, "uses": uses, "ttl": ttl}, status_code=201)

    async def start_bootstrap(self, request: Request, user: User) -> Response:
        """POST /api/agents/bootstrap: install agents on agentless hosts over their SSH
        (pattern, limit, prefix, index_url, server, timeout); 202 with its id, followed at
        GET /api/agents/bootstrap/{id}."""
        data = await body(request)
        boot = await bootstrap.start_bootstrap(self.services, user, source(request), data)
        return JSONResponse(boot.view(), status_code=202)

    async def get_bootstrap(self, request: Request, user: User) -> Response:
        """GET /api/agents/bootstrap/{id}: each host's state and steps so far."""
        boot = bootstrap.get_bootstrap(self.services, request.path_params["id"])
        return JSONResponse(boot.view())

    async def hosts(self, request: Request, user: User) -> Response:
        """GET /api/hosts?pattern=&limit=: the hosts a pattern (within a limit) matches now."""
        pattern = request.query_params.get("pattern") or "all"
        limit = request.query_params.get("limit") or None
        planned = await plan_pattern(self.services, pattern, "true", limit=limit)
        return JSONResponse(
            {
                "pattern": pattern,
                "limit": limit,
                "hosts": [{"name": p.host, "connection": p.connection} for p in planned],
            }
        )

    def routes(self) -> list[Route]:
        """The agent and host routes."""
        route = self.api.route
        admin = ("admin",)
        return [
            Route("/api/agents", route(self.list_agents)),
            Route("/api/agents/tokens", route(self.enroll_token, admin), methods=["POST"]),
            Route("/api/agents/bootstrap", route(self.start_bootstrap, admin), methods=["POST"]),
            Route("/api/agents/bootstrap/{id}", route(self.get_bootstrap, admin)),
            Route("/api/agents/metrics/recent", route(self.recent_metrics)),
            Route("/api/agents/{name}/metrics", route(self.metrics)),
            Route(
                "/api/agents/{name}/{action}", route(self.set_agent_state, admin), methods=["POST"]
            ),
            Route("/api/hosts", route(self.hosts)),
        ]
