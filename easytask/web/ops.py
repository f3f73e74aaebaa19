"""Operations endpoints: /healthz, /readyz, /metrics and webhook deliveries of a job."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from easytask.scheduler.metrics import Snapshot
from easytask.service.context import Services
from easytask.service.hostmetrics import latest_samples
from easytask.service.reading import Reader
from easytask.store.models import RunState, User
from easytask.store.outage import RETRY_AFTER
from easytask.store.serialize import delivery_dict
from easytask.web.requests import ApiRequests, int_param

AGENT_STATUSES = ("online", "busy", "unreachable", "pending", "revoked")
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class OpsApi:
    """Health without a login; metrics and deliveries with an API token, as the rest of /api."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    async def healthz(self, request: Request) -> Response:
        """GET /healthz: the process is alive and its event loop answers."""
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """GET /readyz: 200 when the database answers and agents can connect, else 503.

        Anyone may ask, so the answer names what is not ready and the kind of fault (a database
        "unavailable: disk full for 12 s"), never the error's text (the log has it); with the
        output waiting for the database (`buffer`).
        """
        problems = await self.services.ready()
        buffer = self.services.output_buffer()
        if problems:
            return JSONResponse(
                {"status": "not ready", "problems": problems, "buffer": buffer},
                status_code=503,
                headers={"retry-after": str(RETRY_AFTER)},
            )
        return JSONResponse({"status": "ready", "buffer": buffer})

    async def metrics(self, request: Request) -> Response:
        """GET /metrics: with the metrics token (if one is set) or any API token."""
        wanted = self.services.settings.metrics_token
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compared as bytes: a header may carry any byte, and str comparison takes ASCII only
        if (
            wanted
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.encode("utf-8", "surrogateescape"), wanted.encode())
        ):
            return await self._metrics(request)
        return await self.api.route(self._metrics_for_user)(request)

    async def _metrics_for_user(self, request: Request, user: User) -> Response:
        return await self._metrics(request, await Reader.of(self.services, user))

    async def _metrics(self, request: Request, reader: Reader | None = None) -> Response:
        """Prometheus text exposition (run counts of the hosts a user's token may read)."""
        server = self.services
        registry = server.registry
        agents: dict[str, int] = {}
        for info in registry.agents.values():
            status = registry.status(info)
            agents[status] = agents.get(status, 0) + 1
        if reader is None:  # the metrics token: the whole server
            runs = await server.store.call(server.store.run_state_counts)
        else:
            runs = await reader.run_state_counts()
        snap = Snapshot(
            agents=agents,
            runs=runs,
            log_lines=server.writer.total_written,
            sse_viewers=server.hub.viewers,
            hosts=await latest_samples(server),
        )
        text = server.metrics.render(snap, AGENT_STATUSES, RunState.ALL)
        return PlainTextResponse(text, media_type=PROMETHEUS_TYPE)

    async def deliveries(self, request: Request, user: User) -> Response:
        """GET /api/jobs/{job_id}/deliveries: every webhook delivery attempt for the job, with
        its details for admins only."""
        job_id = int_param(request, "job_id")
        store = self.services.store
        await (await Reader.of(self.services, user)).job(job_id)
        rows = await store.call(store.deliveries, job_id)
        details = user.role == "admin"
        return JSONResponse({"deliveries": [delivery_dict(r, details=details) for r in rows]})

    def routes(self) -> list[Route]:
        """The routes, to mount before the console's."""
        return [
            Route("/healthz", self.healthz),
            Route("/readyz", self.readyz),
            Route("/metrics", self.metrics),
            Route("/api/jobs/{job_id}/deliveries", self.api.route(self.deliveries)),
        ]
