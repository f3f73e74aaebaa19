"""The console's pages: dashboard, runs, jobs, ad hoc commands, agents and playbooks."""

from __future__ import annotations

import logging
import time
from collections import Counter
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from easytask.durations import parse_duration
from easytask.errors import APIError, EasyTaskError
from easytask.scheduler.inflight import JobOptions
from easytask.service import agents, jobs
from easytask.service.approvals import approval_dict
from easytask.service.context import Services
from easytask.service.files import checksum_job, human_size
from easytask.service.playbooks import playbook_listing
from easytask.service.reading import Reader
from easytask.service.templates import job_template
from easytask.store.models import RunState, User
from easytask.store.runs import MARKS, RAN_AS
from easytask.store.serialize import delivery_dict, job_warnings
from easytask.web.console import Console
from easytask.web.errors import PageError, http_status
from easytask.web.format import FAILED_STATES, job_row, playbook_row, run_row, shown_state
from easytask.web.grouped import job_groups
from easytask.web.matrix import PLAYBOOK_KINDS, job_section, matrix
from easytask.web.requests import ROLES_OPERATE
from easytask.web.runfilter import FILTERS, RunPage, RunQuery, find_runs

log = logging.getLogger("easytask.server")

ADHOC_KINDS = ("command", "script", "copy", "checksum")


class ConsolePages:
    """Every console page behind the sign-in, bound to one server."""

    def __init__(self, services: Services, console: Console) -> None:
        self.services = services
        self.console = console

    # -- data helpers -----------------------------------------------------------------------

    async def agent_rows(self, user: User) -> list[dict[str, Any]]:
        """Every agent the user may see with its live status, load and running count."""
        out = []
        for view in await (await Reader.of(self.services, user)).agents():
            row, facts = view.row, view.facts
            load = facts.get("load") or []
            out.append(
                {
                    "name": row.name,
                    "state": row.state,
                    "status": view.status,
                    "busy": view.busy,
                    "address": row.address,
                    "version": row.version,
                    "last_seen": row.last_seen,
                    "load": load[0] if load else None,
                    "running": view.running,
                    "slots": row.slots,
                    "groups": view.groups,
                    "pending": view.pending,
                    "approved": view.approved,
                    "fingerprint": row.fingerprint,
                    "os": facts.get("os") or facts.get("system") or "",
                }
            )
        return out

    # -- pages ------------------------------------------------------------------------------

    async def dashboard(self, request: Request, user: User) -> Response:
        """GET /: agents by state, jobs in flight, recent failures (of the hosts the user may
        read)."""
        reader = await Reader.of(self.services, user)
        agents = await self.agent_rows(user)
        counts = Counter(a["status"] for a in agents)
        running = await reader.list_jobs(states=[RunState.QUEUED, RunState.RUNNING], limit=20)
        recent = await reader.list_jobs(limit=10)
        awaiting = await reader.awaiting_approval()
        ids = [j.id for j in running + recent if j.id is not None]
        progress = await reader.job_state_counts(ids)
        failures = await reader.find_runs(status=list(FAILED_STATES), limit=10)
        return self.console.render(
            request,
            user,
            "dashboard.html",
            section="dashboard",
            agent_counts={
                k: counts.get(k, 0) for k in ("online", "busy", "unreachable", "pending", "revoked")
            },
            agents_total=len(agents),
            running=[job_row(j, progress) for j in running],
            awaiting=[job_row(j, {}) for j in awaiting],
            recent=[job_row(j, progress) for j in recent],
            failures=[run_row(r, by) for r, by in failures],
            failed_filter=",".join(FAILED_STATES),
        )

    async def runs(self, request: Request, user: User) -> Response:
        """GET /runs: history with filters in the URL and keyset pagination."""
        q = request.query_params
        error = ""
        page = RunPage([], None, None)
        try:
            query = RunQuery.from_params(q, default_limit=50, max_limit=500)
            page = await find_runs(await Reader.of(self.services, user), query)
        except APIError as exc:
            error = str(exc)
            query = RunQuery(
                filters={k: q.get(k) or "" for k in FILTERS},
                statuses=[s for v in q.getlist("status") for s in v.split(",") if s.strip()],
            )
        base = query.link_params(explicit_limit=bool(q.get("limit")))
        newer = older = ""
        if page.newer_after is not None:
            newer = "/runs?" + urlencode([*base, ("after", str(page.newer_after))])
        if page.older_before is not None:
            older = "/runs?" + urlencode([*base, ("before", str(page.older_before))])
        paged = query.before is not None or query.after is not None
        return self.console.render(
            request,
            user,
            "runs.html",
            status=400 if error else 200,
            section="runs",
            filters=query.filters,
            statuses=query.statuses,
            error=error,
            rows=[run_row(r, by) for r, by in page.rows],
            newer=newer,
            older=older,
            newest="/runs?" + urlencode(base) if paged else "",
            export_query=urlencode([(k, v) for k, v in query.filters.items() if v])
            + "".join("&" + urlencode({"status": s}) for s in query.statuses),
        )

    async def run_page(self, request: Request, user: User) -> Response:
        """GET /runs/{id}: details, timeline and the log viewer."""
        run_id = self.console.int_param(request, "run_id")
        store = self.services.store
        reader = await Reader.of(self.services, user)
        run = await reader.run(run_id)
        job = await store.call(store.get_job, run.job_id)
        events = await store.call(store.run_events, run_id)
        siblings = await reader.job_runs(run.job_id)
        return self.console.render(
            request,
            user,
            "run.html",
            section=job_section(job),
            run=run_row(run, job.submitted_by if job else ""),
            job=job,
            events=events,
            ran_as=next((e.detail for e in reversed(events) if e.kind == RAN_AS), ""),
            marks={e.kind: e.detail for e in events if e.kind in MARKS},
            final=run.state in RunState.FINAL,
            siblings=[run_row(r) for r in siblings if r.id != run.id][:50],
            initial_q=request.query_params.get("q") or "",
        )

    async def job_page(self, request: Request, user: User) -> Response:
        """GET /jobs/{id}: the per-host status grid, live; a playbook's as tasks x hosts."""
        job_id = self.console.int_param(request, "job_id")
        store = self.services.store
        job, runs = await (await Reader.of(self.services, user)).job(job_id)
        marks = await store.call(store.job_run_marks, job_id)
        grouped = None
        if request.query_params.get("view") == "grouped":
            await self.services.writer.flush()
            grouped = await store.call(job_groups, store, runs)
        approval = await store.call(store.get_approval, job_id)
        details = user.role == "admin"  # delivery errors tell which addresses answer
        deliveries = [
            delivery_dict(d, details=details) for d in await store.call(store.deliveries, job_id)
        ]
        return self.console.render(
            request,
            user,
            "job.html",
            deliveries=deliveries,
            delivery_details=details,
            section=job_section(job),
            matrix=matrix(job, runs) if job.kind in PLAYBOOK_KINDS else None,
            grouped=grouped,
            job=job,
            warnings=job_warnings(job),
            job_state=shown_state(job.state, Counter(r.state for r in runs)),
            runs=[{**run_row(r), "marks": sorted(marks.get(r.id or 0, ()))} for r in runs],
            final=job.state in RunState.FINAL,
            again=(
                "/playbooks"  # a playbook runs again from its page, with its file
                if job.kind in PLAYBOOK_KINDS
                else "/adhoc?" + urlencode({"pattern": job.pattern, "command": job.command})
            ),
            approval=approval_dict(approval) if approval is not None else None,
            launched_from=job_template(job),
        )

    def _adhoc(self, request: Request, user: User, status: int = 200, **fields: str) -> Response:
        """The ad hoc form, filled with `fields`."""
        limit = self.services.settings.upload_limit
        values = {
            "error": "",
            "kind": "command",
            "pattern": "",
            "command": "",
            "timeout": "",
            "path": "",
            "expect": "",
        }
        values.update(fields)
        if values["kind"] not in ADHOC_KINDS:
            values["kind"] = "command"
        return self.console.render(
            request,
            user,
            "adhoc.html",
            status=status,
            section="adhoc",
            upload_limit=limit,
            upload_limit_text=human_size(limit),
            **values,
        )

    async def adhoc_page(self, request: Request, user: User) -> Response:
        """GET /adhoc: pattern (with live preview); command, script, copy or checksum; timeout."""
        q = request.query_params
        return self._adhoc(
            request,
            user,
            kind=q.get("kind") or "command",
            pattern=q.get("pattern") or "",
            command=q.get("command") or "",
            timeout=q.get("timeout") or "",
        )

    async def adhoc_submit(self, request: Request, user: User) -> Response:
        """POST /adhoc: submit a command or checksum, then show its status grid.

        Scripts and copies carry a file: the page's script sends it to POST /api/uploads and
        the job to POST /api/jobs (the CLI's path, with the same checks and audit record).
        """
        form = await self.console.form(request)
        kind = form.get("kind", "command") or "command"
        pattern = form.get("pattern", "").strip()
        command = form.get("command", "")
        timeout = form.get("timeout", "").strip()
        path = form.get("path", "").strip()
        expect = form.get("expect", "").strip()
        try:
            if not pattern:
                raise PageError("a host pattern is required")
            if kind == "checksum":
                command, name = checksum_job({"checksum": {"path": path, "expect": expect}})
            elif kind == "command":
                if not command.strip():
                    raise PageError("a command is required")
                name = command
            else:
                raise PageError(f"{kind}: sending a file needs JavaScript in the browser")
            try:
                seconds = parse_duration(timeout) if timeout else None
            except (TypeError, ValueError) as exc:
                raise PageError(str(exc)) from exc
            options = JobOptions(timeout=seconds, pending_timeout=self.services.pending_timeout)
            addr = request.client.host if request.client else "?"
            job, _runs = await jobs.submit_adhoc(
                self.services,
                user,
                f"console {addr}",
                pattern=pattern,
                command=command,
                kind=kind,
                name=name,
                options=options,
            )
        except EasyTaskError as exc:
            return self._adhoc(
                request,
                user,
                status=http_status(exc),
                error=str(exc),
                kind=kind,
                pattern=pattern,
                command=command,
                timeout=timeout,
                path=path,
                expect=expect,
            )
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    async def agents_page(self, request: Request, user: User) -> Response:
        """GET /agents: every agent (a scoped user: of the scope); accept and revoke for admins."""
        agents = await self.agent_rows(user)
        scoped = (await Reader.of(self.services, user)).scoped
        refused = [] if scoped else self.services.registry.refused
        return self.console.render(
            request,
            user,
            "agents.html",
            section="agents",
            agents=agents,
            refused=list(reversed(refused[-20:])),
            now=time.time(),
        )

    async def agent_confirm(self, request: Request, user: User) -> Response:
        """GET /agents/{name}/accept|revoke|delete|approve|withdraw (admin): the agent's key
        and what the action does, with the form that does it (the key named in it; approve
        and withdraw name the label, `?group=`)."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        if action not in (*agents.ACTIONS, *agents.LABEL_ACTIONS, "delete"):
            raise PageError("unknown action", status=404)
        row = next((a for a in await self.agent_rows(user) if a["name"] == name), None)
        if row is None:
            raise PageError(f"no agent {name!r}", status=404)
        group = ""
        if action in agents.LABEL_ACTIONS:
            try:
                (group,) = agents.parse_labels(request.query_params.get("group", ""))
            except (APIError, ValueError) as exc:
                raise PageError(f"name one group label: {exc}", status=400) from exc
        return self.console.render(
            request,
            user,
            "agent_confirm.html",
            section="agents",
            agent=row,
            action=action,
            group=group,
        )

    async def agent_action(self, request: Request, user: User) -> Response:
        """POST /agents/{name}/accept|revoke|delete|approve|withdraw (admin); all but delete
        only if the agent holds the key in the form's `fingerprint` (when given); approve and
        withdraw the labels in the form's `groups`."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        if action not in (*agents.ACTIONS, *agents.LABEL_ACTIONS, "delete"):
            raise PageError("unknown action", status=404)
        addr = request.client.host if request.client else "?"
        if action == "delete":
            row = await agents.delete_agent(self.services, user.name, f"console {addr}", name)
            log.info("agent %s deleted by %s (console)", name, user.name)
            return RedirectResponse("/agents", status_code=303)
        form = await self.console.form(request)
        if action in agents.LABEL_ACTIONS:
            row = await agents.set_agent_labels(
                self.services,
                user.name,
                f"console {addr}",
                name,
                action,
                form.get("groups") or "",
                form.get("fingerprint") or None,
            )
            log.info(
                "agent %s: label(s) %s %s by %s (console, key %s)",
                name,
                form.get("groups"),
                "approved" if action == "approve" else "withdrawn",
                user.name,
                row.fingerprint,
            )
            return RedirectResponse("/agents", status_code=303)
        row = await agents.set_agent_state(
            self.services,
            user.name,
            f"console {addr}",
            name,
            action,
            form.get("fingerprint") or None,
        )
        log.info(
            "agent %s set to %s by %s (console, key %s)",
            name,
            row.state,
            user.name,
            row.fingerprint,
        )
        return RedirectResponse("/agents", status_code=303)

    async def playbooks_page(self, request: Request, user: User) -> Response:
        """GET /playbooks: the server's playbooks, their schedules, run now and on/off switches."""
        listing = await playbook_listing(self.services)
        now = datetime.now(UTC)
        return self.console.render(
            request,
            user,
            "playbooks.html",
            section="playbooks",
            folder=listing["dir"],
            playbooks=[playbook_row(entry, now) for entry in listing["playbooks"]],
        )

    def routes(self) -> list[Route]:
        """Every page route."""
        page = self.console.page
        op = ROLES_OPERATE
        return [
            Route("/", page(self.dashboard)),
            Route("/runs", page(self.runs)),
            Route("/runs/{run_id}", page(self.run_page)),
            Route("/jobs/{job_id}", page(self.job_page)),
            Route("/adhoc", page(self.adhoc_page), methods=["GET"]),
            Route("/adhoc", page(self.adhoc_submit, op), methods=["POST"]),
            Route("/agents", page(self.agents_page)),
            Route("/agents/{name}/{action}", page(self.agent_action, ("admin",)), methods=["POST"]),
            Route("/agents/{name}/{action}", page(self.agent_confirm, ("admin",))),
            Route("/playbooks", page(self.playbooks_page)),
        ]
