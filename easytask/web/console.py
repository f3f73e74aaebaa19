"""The web console: server-rendered pages (Jinja2, autoescaped) behind a session sign-in."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from easytask import __version__
from easytask.durations import parse_duration
from easytask.errors import APIError, EasyTaskError, RateLimited
from easytask.loglines import LEVELS
from easytask.scheduler.inflight import JobOptions
from easytask.store.models import AgentState, Job, Run, RunState, User, as_utc
from easytask.web.api import Api, human_size, playbook_listing
from easytask.web.auth import CSRF_FIELD, SAFE_METHODS, SessionAuth, csrf_ok
from easytask.web.runfilter import FILTERS, RunPage, RunQuery, find_runs
from easytask.web.scope import enforce_scope

if TYPE_CHECKING:
    from easytask.server import Server

log = logging.getLogger("easytask.server")

MAX_FORM = 64 * 1024
ROLES_OPERATE = ("admin", "operator")
ADHOC_KINDS = ("command", "script", "copy", "checksum")
FAILED_STATES = (RunState.FAILED, RunState.TERMINATED, RunState.UNREACHABLE)
PageHandler = Callable[[Request, User], Awaitable[Response]]


class PageError(EasyTaskError):
    """The page cannot be shown."""

    def __init__(self, message: str | None = None, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# -- formatting used by the templates -----------------------------------------------------------


def fmt_time(value: datetime | None) -> str:
    """A stored time as `YYYY-MM-DD HH:MM:SS` UTC."""
    value = as_utc(value)
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def fmt_duration(seconds: float | None) -> str:
    """Seconds as `0.42s`, `12.3s`, `4m 05s` or `2h 03m`."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from start to end, if both are known."""
    start, end = as_utc(start), as_utc(end)
    if start is None or end is None:
        return None
    return (end - start).total_seconds()


def safe_next(value: str | None) -> str:
    """A redirect target inside this site only (no `//host`, no scheme)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def web_dir() -> Path:
    """Templates and static files: `easytask/_web` in a wheel, `<repo>/web` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_web", package.parent / "web"):
        if (candidate / "templates").is_dir():
            return candidate
    raise EasyTaskError(
        f"console files not found in {package / '_web'} or {package.parent / 'web'}"
    )


class Console:
    """Every console page, bound to one server."""

    def __init__(self, server: Server, auth: SessionAuth, root: Path) -> None:
        self.server = server
        self.auth = auth
        self.root = root
        self.env = Environment(
            loader=FileSystemLoader(root / "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        stamp = max(
            (p.stat().st_mtime for p in (root / "static").rglob("*") if p.is_file()), default=0.0
        )
        self._static_tag = f"{__version__}-{int(stamp)}"
        self.env.globals.update(
            static=self.static_url,
            version=__version__,
            levels=LEVELS,
            states=RunState.ALL,
            final_states=RunState.FINAL,
        )
        self.env.filters.update(time=fmt_time, duration=fmt_duration)

    def static_url(self, path: str) -> str:
        """The URL of a static file, tagged so a new release is not served from cache."""
        return f"/static/{path}?v={self._static_tag}"

    # -- plumbing ---------------------------------------------------------------------------

    def render(
        self, request: Request, user: User | None, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        """A page from a template, with the user, CSRF token and current section."""
        session = self.auth.read(request)
        html = self.env.get_template(template).render(
            request=request,
            user=user,
            csrf=session.csrf if session else "",
            can_operate=user is not None and user.role in ROLES_OPERATE,
            is_admin=user is not None and user.role == "admin",
            **context,
        )
        return HTMLResponse(html, status_code=status, headers={"cache-control": "no-store"})

    async def form(self, request: Request) -> dict[str, str]:
        """The url-encoded form of a POST (cached on the request), size-limited."""
        cached = request.scope.get("easytask.form")
        if cached is not None:
            return cached
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_FORM:
                raise PageError("form too large", status=413)
        data: dict[str, str] = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            data = dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))
        request.scope["easytask.form"] = data
        return data

    def page(
        self, handler: PageHandler, roles: tuple[str, ...] | None = None
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a page: sign-in (else redirect to /login), CSRF on POST, role check, errors."""

        async def wrapped(request: Request) -> Response:
            user: User | None = None
            try:
                user = await self.auth.user(request)
                if user is None:
                    target = request.url.path + (
                        f"?{request.url.query}" if request.url.query else ""
                    )
                    if request.method not in SAFE_METHODS:
                        target = "/"
                    return RedirectResponse(
                        "/login?" + urlencode({"next": target}), status_code=303
                    )
                if request.method not in SAFE_METHODS:
                    form = await self.form(request)
                    if not csrf_ok(self.auth.read(request), form.get(CSRF_FIELD)):
                        raise PageError(
                            "the form's CSRF token is missing or invalid; reload the page and try again",
                            status=403,
                        )
                if roles is not None and user.role not in roles:
                    raise PageError(f"role {user.role!r} may not do this", status=403)
                return await handler(request, user)
            except PageError as exc:
                return self.render(request, user, "error.html", status=exc.status, message=str(exc))
            except APIError as exc:
                return self.render(request, user, "error.html", status=exc.status, message=str(exc))
            except EasyTaskError as exc:
                return self.render(request, user, "error.html", status=400, message=str(exc))
            except Exception:
                log.exception("console error on %s %s", request.method, request.url.path)
                return self.render(
                    request,
                    user,
                    "error.html",
                    status=500,
                    message="internal error; see the server log",
                )

        return wrapped

    @staticmethod
    def int_param(request: Request, name: str) -> int:
        """A path parameter as an int (404 otherwise)."""
        try:
            return int(request.path_params[name])
        except (KeyError, ValueError) as exc:
            raise PageError("not found", status=404) from exc

    # -- sign-in ----------------------------------------------------------------------------

    async def login_page(self, request: Request) -> Response:
        """GET /login: the sign-in form (starts an anonymous session for its CSRF token)."""
        target = safe_next(request.query_params.get("next"))
        if await self.auth.user(request) is not None:
            return RedirectResponse(target, status_code=303)
        return self._login_form(request, target, "", 200)

    def _login_form(
        self, request: Request, target: str, error: str, status: int, name: str = ""
    ) -> Response:
        session = self.auth.read(request)
        fresh = session is None or session.uid is not None
        if fresh:
            session = self.auth.anonymous()
            request.scope["easytask.session"] = session
        response = self.render(
            request, None, "login.html", status=status, next=target, error=error, name=name
        )
        if fresh:
            assert session is not None
            self.auth.set_cookie(response, request, session)
        return response

    async def login(self, request: Request) -> Response:
        """POST /login: check the password; a new session (id and CSRF token) on success."""
        try:
            form = await self.form(request)
        except PageError as exc:
            return self._login_form(request, "/", str(exc), exc.status)
        target = safe_next(form.get("next"))
        name = form.get("username", "").strip()
        session = self.auth.read(request)
        if not csrf_ok(session, form.get(CSRF_FIELD)):
            request.scope["easytask.session"] = None
            return self._login_form(
                request, target, "The form expired; please sign in again.", 403, name
            )
        address = request.client.host if request.client else "?"
        try:
            user = await self.auth.checked_login(
                name, form.get("password", ""), address, f"console {address}"
            )
        except RateLimited as exc:
            log.warning("console sign-in blocked for %r from %s", name, address)
            response = self._login_form(request, target, f"{exc}.", 429, name)
            response.headers["retry-after"] = str(exc.retry_after)
            return response
        except APIError:
            log.warning("console sign-in refused for %r from %s", name, address)
            return self._login_form(request, target, "Wrong user name or password.", 401, name)
        assert session is not None
        await self.auth.revoke(session)
        response = RedirectResponse(target, status_code=303)
        self.auth.set_cookie(response, request, self.auth.signed_in(user))
        return response

    async def logout(self, request: Request, user: User) -> Response:
        """POST /logout: end the session."""
        session = self.auth.read(request)
        if session is not None:
            await self.auth.revoke(session)
        response = RedirectResponse("/login", status_code=303)
        self.auth.clear_cookie(response, request)
        return response

    # -- data helpers -----------------------------------------------------------------------

    async def agents(self) -> list[dict[str, Any]]:
        """Every agent with its live status, load and running count."""
        store = self.server.store
        registry = self.server.registry
        live = await self.server.live_servers()
        out = []
        for row in await store.call(store.list_agents):
            info = registry.agents.get(row.name)
            facts = json.loads(row.facts or "{}")
            load = facts.get("load") or []
            out.append(
                {
                    "name": row.name,
                    "state": row.state,
                    "status": registry.row_status(row, live),
                    "address": row.address,
                    "version": row.version,
                    "last_seen": row.last_seen,
                    "load": load[0] if load else None,
                    "running": info.running if info else 0,
                    "slots": row.slots,
                    "groups": [g for g in row.groups.split(",") if g],
                    "fingerprint": row.fingerprint,
                    "os": facts.get("os") or facts.get("system") or "",
                }
            )
        return out

    @staticmethod
    def run_row(run: Run, submitted_by: str = "") -> dict[str, Any]:
        """A run as the templates show it."""
        return {
            "id": run.id,
            "job": run.job_id,
            "task": run.task,
            "host": run.host,
            "agent": run.agent,
            "connection": run.connection,
            "command": run.command,
            "state": run.state,
            "attempt": run.attempt,
            "exit_code": run.exit_code,
            "signal": run.signal,
            "reason": run.reason,
            "created_at": run.created_at,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "duration": between(run.started_at, run.finished_at),
            "wait": between(run.created_at, run.started_at),
            "user": submitted_by,
            "out_lines": run.out_lines,
            "out_bytes": run.out_bytes,
        }

    # -- pages ------------------------------------------------------------------------------

    async def dashboard(self, request: Request, user: User) -> Response:
        """GET /: agents by state, jobs in flight, recent failures."""
        store = self.server.store
        agents = await self.agents()
        counts = Counter(a["status"] for a in agents)
        running = await store.call(
            store.list_jobs, states=[RunState.QUEUED, RunState.RUNNING], limit=20
        )
        recent = await store.call(store.list_jobs, limit=10)
        ids = [j.id for j in running + recent if j.id is not None]
        progress = await store.call(store.job_state_counts, ids)
        failures = await store.call(store.find_runs, status=list(FAILED_STATES), limit=10)
        return self.render(
            request,
            user,
            "dashboard.html",
            section="dashboard",
            agent_counts={
                k: counts.get(k, 0) for k in ("online", "unreachable", "pending", "revoked")
            },
            agents_total=len(agents),
            running=[self._job_row(j, progress) for j in running],
            recent=[self._job_row(j, progress) for j in recent],
            failures=[self.run_row(r, by) for r, by in failures],
            failed_filter=",".join(FAILED_STATES),
        )

    @staticmethod
    def _job_row(job: Job, progress: dict[int, dict[str, int]]) -> dict[str, Any]:
        states = progress.get(job.id or 0, {})
        total = sum(states.values())
        done = sum(n for s, n in states.items() if s in RunState.FINAL)
        return {
            "id": job.id,
            "name": job.name,
            "pattern": job.pattern,
            "command": job.command,
            "state": shown_state(job.state, states),
            "user": job.submitted_by,
            "created_at": job.created_at,
            "finished_at": job.finished_at,
            "total": total,
            "done": done,
            "failed": sum(n for s, n in states.items() if s in FAILED_STATES),
        }

    async def runs(self, request: Request, user: User) -> Response:
        """GET /runs: history with filters in the URL and keyset pagination."""
        q = request.query_params
        error = ""
        page = RunPage([], None, None)
        try:
            query = RunQuery.from_params(q, default_limit=50, max_limit=500)
            page = await find_runs(self.server, query)
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
        return self.render(
            request,
            user,
            "runs.html",
            status=400 if error else 200,
            section="runs",
            filters=query.filters,
            statuses=query.statuses,
            error=error,
            rows=[self.run_row(r, by) for r, by in page.rows],
            newer=newer,
            older=older,
            newest="/runs?" + urlencode(base) if paged else "",
            export_query=urlencode([(k, v) for k, v in query.filters.items() if v])
            + "".join("&" + urlencode({"status": s}) for s in query.statuses),
        )

    async def run_page(self, request: Request, user: User) -> Response:
        """GET /runs/{id}: details, timeline and the log viewer."""
        run_id = self.int_param(request, "run_id")
        store = self.server.store
        run = await store.call(store.get_run, run_id)
        if run is None:
            raise PageError(f"no run {run_id}", status=404)
        job = await store.call(store.get_job, run.job_id)
        events = await store.call(store.run_events, run_id)
        siblings = await store.call(store.job_runs, run.job_id)
        return self.render(
            request,
            user,
            "run.html",
            section="runs",
            run=self.run_row(run, job.submitted_by if job else ""),
            job=job,
            events=events,
            final=run.state in RunState.FINAL,
            siblings=[self.run_row(r) for r in siblings if r.id != run.id][:50],
            initial_q=request.query_params.get("q") or "",
        )

    async def job_page(self, request: Request, user: User) -> Response:
        """GET /jobs/{id}: the per-host status grid, live."""
        job_id = self.int_param(request, "job_id")
        store = self.server.store
        job = await store.call(store.get_job, job_id)
        if job is None:
            raise PageError(f"no job {job_id}", status=404)
        runs = await store.call(store.job_runs, job_id)
        return self.render(
            request,
            user,
            "job.html",
            section="adhoc",
            job=job,
            job_state=shown_state(job.state, Counter(r.state for r in runs)),
            runs=[self.run_row(r) for r in runs],
            final=job.state in RunState.FINAL,
            again="/adhoc?" + urlencode({"pattern": job.pattern, "command": job.command}),
        )

    def _adhoc(self, request: Request, user: User, status: int = 200, **fields: str) -> Response:
        """The ad hoc form, filled with `fields`."""
        limit = self.server.config.upload_limit
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
        return self.render(
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
        form = await self.form(request)
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
                command, name = Api._checksum({"checksum": {"path": path, "expect": expect}})
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
            options = JobOptions(timeout=seconds, pending_timeout=self.server.pending_timeout)
            planned = await self.server.plan_adhoc(pattern, command)
            addr = request.client.host if request.client else "?"
            await enforce_scope(
                self.server,
                user,
                [p.host for p in planned],
                f"console {addr}",
                {"kind": "command", "pattern": pattern, "command": command},
            )
            job, _runs = await self.server.engine.submit(
                planned,
                name=name[:200],
                pattern=pattern,
                command=command,
                options=options,
                user=user.name,
                source=f"console {addr}",
            )
            store = self.server.store
            await store.call(
                store.audit,
                user.name,
                "job.submit",
                f"console {addr}",
                {
                    "job": job.id,
                    "kind": kind,
                    "pattern": pattern,
                    "command": command,
                    "hosts": [p.host for p in planned],
                    "timeout": seconds,
                },
            )
        except EasyTaskError as exc:
            return self._adhoc(
                request,
                user,
                status=exc.status if isinstance(exc, APIError) else 400,
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
        """GET /agents: every agent; accept and revoke for admins."""
        agents = await self.agents()
        return self.render(
            request,
            user,
            "agents.html",
            section="agents",
            agents=agents,
            refused=list(reversed(self.server.registry.refused[-20:])),
            now=time.time(),
        )

    async def agent_action(self, request: Request, user: User) -> Response:
        """POST /agents/{name}/accept|revoke (admin)."""
        name = request.path_params["name"]
        state = {"accept": AgentState.ACCEPTED, "revoke": AgentState.REVOKED}.get(
            request.path_params["action"]
        )
        if state is None:
            raise PageError("unknown action", status=404)
        row = await self.server.registry.set_state(name, state)
        if row is None:
            raise PageError(f"no agent {name!r}", status=404)
        log.info("agent %s set to %s by %s (console)", name, state, user.name)
        return RedirectResponse("/agents", status_code=303)

    async def playbooks_page(self, request: Request, user: User) -> Response:
        """GET /playbooks: the server's playbooks, their schedules, run now and on/off switches."""
        listing = await playbook_listing(self.server)
        now = datetime.now(UTC)
        return self.render(
            request,
            user,
            "playbooks.html",
            section="playbooks",
            folder=listing["dir"],
            playbooks=[playbook_row(entry, now) for entry in listing["playbooks"]],
        )

    def routes(self) -> list[Route]:
        """Every console route."""
        page = self.page
        op = ROLES_OPERATE
        return [
            Route("/login", self.login_page, methods=["GET"]),
            Route("/login", self.login, methods=["POST"]),
            Route("/logout", page(self.logout), methods=["POST"]),
            Route("/", page(self.dashboard)),
            Route("/runs", page(self.runs)),
            Route("/runs/{run_id}", page(self.run_page)),
            Route("/jobs/{job_id}", page(self.job_page)),
            Route("/adhoc", page(self.adhoc_page), methods=["GET"]),
            Route("/adhoc", page(self.adhoc_submit, op), methods=["POST"]),
            Route("/agents", page(self.agents_page)),
            Route("/agents/{name}/{action}", page(self.agent_action, ("admin",)), methods=["POST"]),
            Route("/playbooks", page(self.playbooks_page)),
        ]


def shown_state(state: str, run_states: Mapping[str, int]) -> str:
    """A job's state for people: `running` as soon as one of its runs has left the queue."""
    if state == RunState.QUEUED and any(n and s != RunState.QUEUED for s, n in run_states.items()):
        return RunState.RUNNING
    return state


def playbook_row(entry: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A listed playbook as the page shows it: times parsed, the URLs its buttons post to."""
    row = dict(entry)
    row["errors"] = [{**e, "shown": _compiler_style(e)} for e in entry["errors"]]
    schedule = entry.get("schedule")
    if schedule is None:
        row["run_url"] = f"/api/playbooks/{quote(entry['file'], safe='')}/run"
        return row
    name = quote(schedule["name"], safe="")
    shown = dict(schedule)
    for key in ("next_fire", "last_fire"):
        shown[key] = datetime.fromisoformat(schedule[key]) if schedule[key] else None
    nxt = shown["next_fire"]
    shown["next_in"] = (nxt - now).total_seconds() if nxt is not None else None
    shown["next_local"] = ""
    if nxt is not None and schedule["tz"] != "UTC":
        try:
            shown["next_local"] = nxt.astimezone(ZoneInfo(schedule["tz"])).strftime(
                "%Y-%m-%d %H:%M %Z"
            )
        except (KeyError, ValueError):
            pass
    shown["toggle"] = "disable" if schedule["enabled"] else "enable"
    shown["toggle_url"] = f"/api/schedules/{name}/{shown['toggle']}"
    row["schedule"] = shown
    row["run_url"] = f"/api/schedules/{name}/run"
    return row


def _compiler_style(problem: dict[str, Any]) -> str:
    """`file:line:col: message`, then the offending line and a caret under the column."""
    text = str(problem["text"])
    if problem.get("source") is not None:
        text += "\n    " + str(problem["source"])
        if problem.get("col"):
            text += "\n    " + " " * (int(problem["col"]) - 1) + "^"
    return text
