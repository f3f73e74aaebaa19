"""The API of jobs and runs: submit, upload, follow, read logs, kill."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from easytask.durations import parse_duration
from easytask.errors import APIError, UsageError
from easytask.loglines import LEVELS
from easytask.masking import check_secret_env
from easytask.plan.become import BecomeRequest, check_user
from easytask.scheduler.inflight import JobOptions
from easytask.service import approvals, credentials, files, jobs
from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import Job, Run, RunState, User
from easytask.store.runs import CHANGED, IGNORED, RAN_AS
from easytask.store.serialize import RUN_KEYS, RUN_VALUES, job_dict, run_dict
from easytask.web.requests import (
    ROLES_OPERATE,
    ApiRequests,
    body,
    id_number,
    int_param,
    no_nul,
    positive,
    source,
)
from easytask.web.runfilter import RunQuery, find_jobs, find_runs, job_kind
from easytask.web.sse import job_stream

MAX_FORKS = 100_000


def become_request(data: dict[str, Any]) -> BecomeRequest:
    """`become` (true or false) and `become_user` of a submission; a user alone means become."""
    become = data.get("become")
    if become is not None and not isinstance(become, bool):
        raise APIError("become must be true or false")
    user = data.get("become_user")
    if user in (None, ""):
        return BecomeRequest(become=become)
    if not isinstance(user, str):
        raise APIError("become_user must be a user name")
    try:
        checked = check_user(user, "become_user")
    except UsageError as exc:
        raise APIError(exc.message) from exc
    return BecomeRequest(become=True if become is None else become, user=checked)


class JobsApi:
    """/api/jobs, /api/uploads and /api/runs."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api

    # -- jobs -------------------------------------------------------------------------------

    async def submit(self, request: Request, user: User) -> Response:
        """POST /api/jobs: an ad hoc command over a host pattern.

        `?runs=0`: the answer lists the runs' hosts instead of the runs."""
        data = await body(request)
        pattern = str(data.get("pattern") or "").strip()
        command = str(data.get("command") or "")
        if not pattern:
            raise APIError("pattern is required")
        if not command.strip() and data.get("kind", "command") == "command":
            raise APIError("command is required")
        field = "timeout"
        try:
            timeout = None
            if data.get("timeout") not in (None, ""):
                timeout = parse_duration(data["timeout"])
            field = "pending_timeout"
            pending = self.services.pending_timeout
            if data.get("pending_timeout") not in (None, ""):
                pending = parse_duration(data["pending_timeout"])
            field = "forks"
            forks = int(data.get("forks") or 0)
            if not 0 <= forks <= MAX_FORKS:
                raise ValueError(f"must be from 0 (no limit) to {MAX_FORKS}, not {forks}")
        except (TypeError, ValueError) as exc:
            raise APIError(f"{field}: {exc}") from exc
        try:
            secret_env = check_secret_env(data.get("secrets"))
        except ValueError as exc:
            raise APIError(str(exc)) from exc
        named = data.get("credentials") or []
        if not isinstance(named, list) or not all(isinstance(n, str) for n in named):
            raise APIError("credentials must be a list of credential names")
        for name in named:
            credentials.check_name(name)
        options = JobOptions(
            timeout=timeout,
            pending_timeout=pending,
            forks=forks,
            secret_env=secret_env,
            become=become_request(data),
        )
        if data.get("kind") == "checksum":
            command, data["name"] = files.checksum_job(data)
        elif data.get("kind", "command") != "command":
            action, command = files.file_action(self.services.state_dir, data)
            options = replace(options, file_action=action)
        job, runs = await jobs.submit_adhoc(
            self.services,
            user,
            source(request),
            pattern=pattern,
            command=command,
            kind=data.get("kind", "command"),
            name=str(data.get("name") or command),
            options=options,
            one=bool(data.get("one")),
            **_adhoc_selection(data),
            credentials=list(dict.fromkeys(named)),
        )
        return await submitted(self.services, job, runs, request)

    async def upload(self, request: Request, user: User) -> Response:
        """POST /api/uploads?name=FILE: the raw body, streamed to disk, for a later copy or script.

        Memory stays bounded whatever the size; past the server's --upload-limit the upload
        is refused (413) and nothing is kept. Returns the upload id, size and SHA-256.
        """
        declared = request.headers.get("content-length")
        result = await files.store_upload(
            self.services,
            request.query_params.get("name") or "",
            int(declared) if declared and declared.isdigit() else None,
            request.stream(),
            user.name,
            source(request),
        )
        return JSONResponse(result, status_code=201)

    async def fetched(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/fetched: the file a fetch run brought back."""
        run = await (await Reader.of(self.services, user)).run(int_param(request, "run_id"))
        path = files.fetched_file(self.services, run.id or 0)
        return FileResponse(path, filename=path.name)

    async def list_jobs(self, request: Request, user: User) -> Response:
        """GET /api/jobs: jobs newest first with the runs list's filters (since, until, status,
        task, host, user, q) and `kind`; keyset pages by id (`before`/`after`, `limit`), so a
        page stays the same while jobs are added. Each job counts its runs by state."""
        no_nul(request)
        query = RunQuery.from_params(
            request.query_params, default_limit=50, max_limit=500, jobs=True
        )
        reader = await Reader.of(self.services, user)
        page = await find_jobs(reader, query, job_kind(request.query_params))
        counts = await reader.job_state_counts([j.id for j in page.rows if j.id is not None])
        return JSONResponse(
            {
                "jobs": [{**job_dict(j), "runs": counts.get(j.id or 0, {})} for j in page.rows],
                "next_before": page.older_before,
                "prev_after": page.newer_after,
            }
        )

    async def get_job(self, request: Request, user: User) -> Response:
        """GET /api/jobs/{id}: the job and its runs.

        `?fields=host,state,...`: only these fields of each run."""
        job_id = int_param(request, "job_id")
        fields = run_fields(request.query_params.get("fields"))
        reader = await Reader.of(self.services, user)
        job, rows, ran_as, marks = await reader.job_rows(job_id)
        none: set[str] = set()
        in_job: dict[str, Callable[[Any], Any]] = {  # a run's fields beside `run_dict`'s
            "ran_as": lambda r: ran_as.get(r.id, ""),
            "changed": lambda r: CHANGED in marks.get(r.id, none),
            "ignored": lambda r: IGNORED in marks.get(r.id, none),
        }
        if fields is None:
            extra = list(in_job.items())
            runs = [{**run_dict(r), **{name: value(r) for name, value in extra}} for r in rows]
        else:  # only the fields asked for are worked out
            values = {**RUN_VALUES, **in_job}
            picked = [(name, values[name]) for name in fields]
            runs = [{name: value(r) for name, value in picked} for r in rows]
        return JSONResponse({"job": job_dict(job), "runs": runs})

    async def kill_job(self, request: Request, user: User) -> Response:
        """POST /api/jobs/{id}/kill: terminate every run of the job still in flight."""
        job_id = int_param(request, "job_id")
        count = await jobs.kill_job(self.services, user, source(request), job_id)
        return JSONResponse({"job": job_id, "killed": count})

    async def job_events(self, request: Request, user: User) -> Response:
        """GET /api/jobs/{id}/events: SSE of stored then live lines and state changes."""
        job_id = int_param(request, "job_id")
        reader = await Reader.of(self.services, user)
        if reader.scoped or not self.services.engine.running_here(job_id):
            await reader.job(job_id)  # 404 for no job, or one of hosts outside the scope
        follow = request.query_params.get("follow", "1") != "0"
        lines = request.query_params.get("lines", "1") != "0"
        runs = request.query_params.get("runs", "1") != "0"
        return StreamingResponse(
            job_stream(reader, job_id, follow, lines, runs),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    # -- runs -------------------------------------------------------------------------------

    async def list_runs(self, request: Request, user: User) -> Response:
        """GET /api/runs: the console's filters (see runfilter), newest first, keyset pages."""
        no_nul(request)
        query = RunQuery.from_params(request.query_params, default_limit=100, max_limit=1000)
        page = await find_runs(await Reader.of(self.services, user), query)
        return JSONResponse(
            {
                "runs": [{**run_dict(r), "submitted_by": by} for r, by in page.rows],
                "next_before": page.older_before,
                "prev_after": page.newer_after,
            }
        )

    async def get_run(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}: the run and its timeline."""
        run_id = int_param(request, "run_id")
        store = self.services.store
        run = await (await Reader.of(self.services, user)).run(run_id)
        events = await store.call(store.run_events, run_id)
        ran_as = next((e.detail for e in reversed(events) if e.kind == RAN_AS), "")
        kinds = {e.kind for e in events}
        return JSONResponse(
            {
                "run": {
                    **run_dict(run),
                    "ran_as": ran_as,
                    "changed": CHANGED in kinds,
                    "ignored": IGNORED in kinds,
                },
                "events": [
                    {"at": e.at.isoformat(), "kind": e.kind, "detail": e.detail} for e in events
                ],
            }
        )

    async def run_log(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/log: stored lines; after, limit, level, grep."""
        no_nul(request)
        run_id = int_param(request, "run_id")
        q = request.query_params
        store = self.services.store
        await (await Reader.of(self.services, user)).run(run_id)
        levels = [lv.strip().upper() for lv in (q.get("level") or "").split(",") if lv.strip()]
        bad = [lv for lv in levels if lv not in LEVELS]
        if bad:
            raise APIError(f"unknown level {bad[0]!r}; use one of {', '.join(LEVELS)}")
        try:
            after = id_number(q["after"], "after") if q.get("after") not in (None, "", "0") else 0
            limit = min(positive(q.get("limit") or "10000", "limit"), 100000)
        except ValueError as exc:
            raise APIError(str(exc)) from exc
        await self.services.writer.flush()
        rows = await store.call(
            store.read_lines,
            run_id,
            after_seq=after,
            limit=limit,
            levels=levels or None,
            grep=q.get("grep") or None,
        )
        return JSONResponse(
            {
                "run": run_id,
                "lines": [
                    {"seq": r.seq, "ts": r.ts, "stream": r.stream, "level": r.level, "text": r.text}
                    for r in rows
                ],
            }
        )

    async def kill_run(self, request: Request, user: User) -> Response:
        """POST /api/runs/{id}/kill: terminate one run."""
        run_id = int_param(request, "run_id")
        killed = await jobs.kill_run(self.services, user, source(request), run_id)
        return JSONResponse({"run": run_id, "killed": int(killed)})

    def routes(self) -> list[Route]:
        """The job and run routes."""
        route = self.api.route
        op = ROLES_OPERATE
        return [
            Route("/api/jobs", route(self.submit, op), methods=["POST"]),
            Route("/api/jobs", route(self.list_jobs), methods=["GET"]),
            Route("/api/uploads", route(self.upload, op), methods=["POST"]),
            Route("/api/jobs/{job_id}", route(self.get_job)),
            Route("/api/jobs/{job_id}/events", route(self.job_events)),
            Route("/api/jobs/{job_id}/kill", route(self.kill_job, op), methods=["POST"]),
            Route("/api/runs", route(self.list_runs)),
            Route("/api/runs/{run_id}", route(self.get_run)),
            Route("/api/runs/{run_id}/log", route(self.run_log)),
            Route("/api/runs/{run_id}/kill", route(self.kill_run, op), methods=["POST"]),
            Route("/api/runs/{run_id}/fetched", route(self.fetched)),
        ]


async def submitted(services: Services, job: Job, runs: list[Run], request: Request) -> Response:
    """A submission's answer: 201 with the job and its runs, or 202 with a job an approval rule
    holds (no runs) and its approval request. With `?runs=0`, the 201 answer has the hosts of
    the runs (`hosts`, each once, in the runs' order) instead of the runs: all a client that
    follows the job needs: the job's runs start only once its answer is made, and 10,000 runs
    take the server 0.12 s to write out."""
    if job.state != RunState.AWAITING_APPROVAL:
        answer: dict[str, Any] = {"job": job_dict(job)}
        if request.query_params.get("runs", "1") == "0":
            answer["hosts"] = list(dict.fromkeys(r.host for r in runs))
        else:
            answer["runs"] = [run_dict(r) for r in runs]
        return JSONResponse(answer, status_code=201)
    store = services.store
    row = await store.call(store.get_approval, job.id or 0)
    approval = approvals.approval_dict(row) if row is not None else None
    return JSONResponse({"job": job_dict(job), "runs": [], "approval": approval}, status_code=202)


JOB_RUN_KEYS = (*RUN_KEYS, "ran_as", "changed", "ignored")  # a run's fields in a job


def run_fields(text: str | None) -> list[str] | None:
    """The run fields a `fields` parameter names (a comma list), checked; None: all of them.
    A client that prints a few columns of a job of thousands of runs asks for those alone."""
    if text is None:
        return None
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in JOB_RUN_KEYS]
    if unknown or not names:
        what = f"unknown run field {unknown[0]!r}" if unknown else "no run field named"
        raise APIError(f"fields: {what}; use some of {', '.join(JOB_RUN_KEYS)}")
    return names


def _adhoc_selection(data: dict[str, Any]) -> dict[str, Any]:
    """`limit`, `extra_vars` and `user` of an ad hoc submission, checked (see `plan_adhoc`)."""
    limit = data.get("limit")
    extra = data.get("extra_vars")
    user = data.get("user")
    if limit is not None and not isinstance(limit, str):
        raise APIError("limit must be a host pattern")
    if extra is not None and not isinstance(extra, dict):
        raise APIError("extra_vars must be an object")
    if user is not None and not isinstance(user, str):
        raise APIError("user must be a user name")
    return {"limit": limit or None, "extra_vars": extra, "remote_user": user or None}
