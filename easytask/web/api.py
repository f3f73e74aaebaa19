"""The JSON API shared by the CLI and the console."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from easytask.cron import Cron
from easytask.durations import parse_duration
from easytask.errors import APIError, EasyTaskError
from easytask.loglines import LEVELS
from easytask.masking import check_secret_env
from easytask.plan import PlaybookPlan, plan_playbook
from easytask.playbook import PlaybookErrors, load_playbook
from easytask.scheduler.fileops import FileAction, checksum_command, sha256_file
from easytask.scheduler.inflight import JobOptions
from easytask.scheduler.playbooks import submit_playbook
from easytask.store.audit import AuditNote
from easytask.store.models import AgentState, RunState, User, as_utc
from easytask.store.serialize import job_dict, run_dict, schedule_dict
from easytask.web.runfilter import RunQuery, find_runs, parse_time
from easytask.web.scope import enforce_scope

if TYPE_CHECKING:
    from easytask.server import Server

log = logging.getLogger("easytask.server")

MAX_BODY = 1 << 20
MAX_PLAYBOOK_BODY = 64 << 20
UPLOAD_CHUNK = 1 << 20  # bytes buffered before a write (and the memory an upload holds)
ROLES_OPERATE = ("admin", "operator")
Handler = Callable[[Request], Awaitable[Response]]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Api:
    """Routes bound to one server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self._token_cache: dict[str, tuple[float, User | None]] = {}
        # Set by the console: the signed-in user of a browser request without a bearer token.
        self.session_user: Callable[[Request], Awaitable[User | None]] | None = None

    # -- auth -------------------------------------------------------------------------------

    async def user(self, request: Request) -> User:
        """The user behind the request's bearer token; 401 without a valid one."""
        header = request.headers.get("authorization", "")
        if not header and self.session_user is not None:
            session_user = await self.session_user(request)
            if session_user is not None:
                return session_user
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError("authentication required: pass a bearer token", status=401)
        now = time.monotonic()
        cached = self._token_cache.get(token)
        if cached is None or now - cached[0] > 10:
            store = self.server.store
            user = await store.call(store.user_for_token, token.strip())
            self._token_cache[token] = (now, user)
            if len(self._token_cache) > 10000:
                self._token_cache.clear()
        else:
            user = cached[1]
        if user is None:
            raise APIError("invalid, expired or revoked token", status=401)
        return user

    def forget_tokens(self) -> None:
        """Drop cached token lookups so a revoked token or a changed user applies at once."""
        self._token_cache.clear()

    def route(
        self,
        handler: Callable[[Request, User], Awaitable[Response]],
        roles: tuple[str, ...] | None = None,
    ) -> Handler:
        """Wrap a handler with authentication, an optional role check and error mapping."""

        async def wrapped(request: Request) -> Response:
            try:
                user = await self.user(request)
                if roles is not None and user.role not in roles:
                    raise APIError(f"role {user.role!r} may not do this", status=403)
                return await handler(request, user)
            except APIError as exc:
                return _error(exc.status, str(exc))
            except EasyTaskError as exc:
                return _error(400, str(exc))
            except HTTPException:
                raise
            except Exception:
                log.exception("API error on %s %s", request.method, request.url.path)
                return _error(500, "internal error; see the server log")

        return wrapped

    # -- helpers ----------------------------------------------------------------------------

    @staticmethod
    async def body(request: Request, limit: int = MAX_BODY) -> dict[str, Any]:
        """The JSON body, size-limited and checked to be an object."""
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise APIError("request body too large", status=413)
        try:
            data = json.loads(raw or b"{}")
        except ValueError as exc:
            raise APIError(f"body is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise APIError("body must be a JSON object")
        return data

    @staticmethod
    def no_nul(request: Request) -> None:
        """Refuse query parameters holding NUL: the database would cut the text there, and a
        filter cut to nothing matches everything."""
        if any("\x00" in value for _, value in request.query_params.multi_items()):
            raise APIError("a NUL character is not allowed in a query parameter")

    @staticmethod
    def int_param(request: Request, name: str) -> int:
        """A path parameter as an int."""
        try:
            return int(request.path_params[name])
        except (KeyError, ValueError) as exc:
            raise APIError(f"{name} must be a number", status=404) from exc

    @staticmethod
    def source(request: Request) -> str:
        """Where a request came from: client kind and address."""
        kind = request.headers.get("x-easytask-client", "api")
        addr = request.client.host if request.client else "?"
        return f"{kind} {addr}"

    # -- jobs -------------------------------------------------------------------------------

    async def submit(self, request: Request, user: User) -> Response:
        """POST /api/jobs: an ad hoc command over a host pattern."""
        data = await self.body(request)
        pattern = str(data.get("pattern") or "").strip()
        command = str(data.get("command") or "")
        if not pattern:
            raise APIError("pattern is required")
        if not command.strip() and data.get("kind", "command") == "command":
            raise APIError("command is required")
        try:
            timeout = None
            if data.get("timeout") not in (None, ""):
                timeout = parse_duration(data["timeout"])
            pending = self.server.pending_timeout
            if data.get("pending_timeout") not in (None, ""):
                pending = parse_duration(data["pending_timeout"])
            forks = int(data.get("forks") or 0)
        except (TypeError, ValueError) as exc:
            raise APIError(str(exc)) from exc
        try:
            secret_env = check_secret_env(data.get("secrets"))
        except ValueError as exc:
            raise APIError(str(exc)) from exc
        options = JobOptions(
            timeout=timeout, pending_timeout=pending, forks=forks, secret_env=secret_env
        )
        if data.get("kind") == "checksum":
            command, data["name"] = self._checksum(data)
        elif data.get("kind", "command") != "command":
            action, command = self._file_action(data)
            options = replace(options, file_action=action)
        planned = await self.server.plan_adhoc(pattern, command)
        if data.get("one"):
            agents = [p for p in planned if p.connection == "agent"] or planned
            chosen = self.server.registry.least_busy([p.host for p in agents])
            planned = [p for p in agents if p.host == chosen]
        await enforce_scope(
            self.server,
            user,
            [p.host for p in planned],
            self.source(request),
            {"kind": data.get("kind", "command"), "pattern": pattern, "command": command},
        )
        action = options.file_action
        audit_detail: dict[str, Any] = {
            "kind": data.get("kind", "command"),
            "pattern": pattern,
            "command": command,
            "hosts": [p.host for p in planned],
            "timeout": options.timeout,
        }
        if secret_env:
            audit_detail["secrets"] = sorted(secret_env)  # names only, never values
        if action is not None and action.kind in ("copy", "script"):
            audit_detail["files"] = await asyncio.to_thread(_file_digests, action.src)
        job, runs = await self.server.engine.submit(
            planned,
            name=str(data.get("name") or command)[:200],
            pattern=pattern,
            command=command,
            options=options,
            user=user.name,
            source=self.source(request),
            audit=AuditNote(user.name, "job.submit", self.source(request), audit_detail),
        )
        return JSONResponse(
            {"job": job_dict(job), "runs": [run_dict(r) for r in runs]}, status_code=201
        )

    async def audit(
        self, user: User | str, action: str, request: Request | None, detail: dict[str, Any]
    ) -> None:
        """Append to the audit chain: who, what, from where."""
        store = self.server.store
        actor = user if isinstance(user, str) else user.name
        source = self.source(request) if request is not None else ""
        await store.call(store.audit, actor, action, source, detail)

    @staticmethod
    def _checksum(data: dict[str, Any]) -> tuple[str, str]:
        """A checksum request: its command and the job's name."""
        spec = data.get("checksum")
        if not isinstance(spec, dict) or not str(spec.get("path") or "").strip():
            raise APIError("checksum.path is required")
        path = str(spec["path"]).strip()
        expect = str(spec.get("expect") or "").strip() or None
        if expect is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expect):
            raise APIError(f"checksum.expect {expect!r} is not a SHA-256 (64 hex digits)")
        return checksum_command(path, expect), f"checksum {path}"

    def _file_action(self, data: dict[str, Any]) -> tuple[FileAction, str]:
        """A copy, script or fetch request, its uploads written to a private dir."""
        kind = data.get("kind")
        spec = data.get(kind) if isinstance(kind, str) else None
        if kind not in ("copy", "script", "fetch") or not isinstance(spec, dict):
            raise APIError(
                "kind must be command, checksum, copy, script or fetch, with an object of that name"
            )
        state = self.server.state_dir
        if kind == "fetch":
            path = str(spec.get("path") or "")
            if not path:
                raise APIError("fetch.path is required")
            return FileAction("fetch", dest=path, store_dir=str(state / "fetched")), f"fetch {path}"
        upload = state / "uploads" / secrets.token_hex(8)
        name = safe_relative(str(spec.get("name") or ""))
        files = spec.get("files")
        try:
            if spec.get("upload"):  # sent before through POST /api/uploads
                token = str(spec["upload"])
                if not re.fullmatch(r"[0-9a-f]{16}", token):
                    raise APIError(f"{kind}.upload: not an upload id: {token!r}")
                upload = state / "uploads" / token
                if not (upload / name).is_file():
                    raise APIError(f"{kind}.upload: no uploaded file {name!r} with id {token}")
            elif isinstance(files, dict):  # a directory
                for rel, b64 in files.items():
                    target = upload / name / safe_relative(str(rel))
                    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    target.write_bytes(base64.b64decode(b64, validate=True))
                (upload / name).mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                target = upload / name
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                target.write_bytes(base64.b64decode(spec.get("data") or "", validate=True))
        except (ValueError, TypeError) as exc:
            raise APIError(f"{kind}: file data must be base64: {exc}") from exc
        src = str(upload / name)
        if kind == "script":
            args = str(spec.get("args") or "")
            interpreter = spec.get("interpreter") or None
            action = FileAction("script", src=src, args=args, interpreter=interpreter)
            return action, f"script {name}" + (f" {args}" if args else "")
        dest = str(spec.get("dest") or "")
        if not dest:
            raise APIError("copy.dest is required")
        mode = spec.get("mode") or None
        if mode is not None and not re.fullmatch(r"0?[0-7]{3,4}", str(mode)):
            raise APIError(f"copy.mode {mode!r} is not an octal mode like 0644")
        action = FileAction(
            "copy",
            src=src,
            dest=dest,
            mode=mode,
            owner=spec.get("owner") or None,
            backup=bool(spec.get("backup")),
        )
        return action, f"copy {name} -> {dest}"

    async def upload(self, request: Request, user: User) -> Response:
        """POST /api/uploads?name=FILE: the raw body, streamed to disk, for a later copy or script.

        Memory stays bounded whatever the size; past the server's --upload-limit the upload
        is refused (413) and nothing is kept. Returns the upload id, size and SHA-256.
        """
        name = request.query_params.get("name") or ""
        if not name or name != Path(name).name or name in (".", ".."):
            raise APIError("name (the file's plain name, no directory) is required")
        limit = self.server.config.upload_limit
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise APIError(_too_large(int(declared), limit), status=413)
        token = secrets.token_hex(8)
        folder = self.server.state_dir / "uploads" / token
        target = folder / name
        digest = hashlib.sha256()
        size = 0
        pending = bytearray()

        def write(fh: Any, data: bytes) -> None:
            digest.update(data)
            fh.write(data)

        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True, mode=0o700)
        fh = await asyncio.to_thread(open, target, "wb")
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise APIError(_too_large(size, limit), status=413)
                pending += chunk
                if len(pending) >= UPLOAD_CHUNK:
                    await asyncio.to_thread(write, fh, bytes(pending))
                    pending.clear()
            await asyncio.to_thread(write, fh, bytes(pending))
        except BaseException:
            fh.close()
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise
        finally:
            fh.close()
        sha = digest.hexdigest()
        await self.audit(
            user,
            "file.upload",
            request,
            {"upload": token, "name": name, "size": size, "sha256": sha},
        )
        return JSONResponse(
            {"upload": token, "name": name, "size": size, "sha256": sha}, status_code=201
        )

    async def fetched(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/fetched: the file a fetch run brought back."""
        run_id = self.int_param(request, "run_id")
        folder = self.server.state_dir / "fetched" / str(run_id)
        files = sorted(folder.iterdir()) if folder.is_dir() else []
        if not files:
            raise APIError(f"run {run_id} fetched no file", status=404)
        return FileResponse(files[0], filename=files[0].name)

    async def get_job(self, request: Request, user: User) -> Response:
        """GET /api/jobs/{id}: the job and its runs."""
        job_id = self.int_param(request, "job_id")
        store = self.server.store
        job = await store.call(store.get_job, job_id)
        if job is None:
            raise APIError(f"no job {job_id}", status=404)
        runs = await store.call(store.job_runs, job_id)
        return JSONResponse({"job": job_dict(job), "runs": [run_dict(r) for r in runs]})

    async def kill_job(self, request: Request, user: User) -> Response:
        """POST /api/jobs/{id}/kill: terminate every run of the job still in flight."""
        job_id = self.int_param(request, "job_id")
        store = self.server.store
        if await store.call(store.get_job, job_id) is None:
            raise APIError(f"no job {job_id}", status=404)
        count = self.server.engine.kill_job(job_id, user.name)
        if self.server.cluster is not None:  # the other servers were asked too: count them all
            runs = await store.call(store.job_runs, job_id)
            count = max(count, sum(r.state not in RunState.FINAL for r in runs))
        await self.audit(user, "job.kill", request, {"job": job_id, "runs_asked": count})
        return JSONResponse({"job": job_id, "killed": count})

    async def job_events(self, request: Request, user: User) -> Response:
        """GET /api/jobs/{id}/events: SSE of stored then live lines and state changes."""
        job_id = self.int_param(request, "job_id")
        store = self.server.store
        if not self.server.engine.running_here(job_id) and (
            await store.call(store.get_job, job_id) is None
        ):
            raise APIError(f"no job {job_id}", status=404)
        follow = request.query_params.get("follow", "1") != "0"
        lines = request.query_params.get("lines", "1") != "0"
        runs = request.query_params.get("runs", "1") != "0"
        return StreamingResponse(
            self._job_stream(job_id, follow, lines, runs),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    async def _job_stream(
        self, job_id: int, follow: bool, lines: bool = True, runs: bool = True
    ) -> AsyncIterator[str]:
        """Stored then live events of a job: run states (unless not `runs`: a client that
        only prints lines and waits for the end), lines (unless not `lines`), and its end."""
        server = self.server
        store = server.store
        # jobstate: carries a job's events except its lines (a status grid gets no line flood)
        sub = server.hub.subscribe(f"job:{job_id}" if lines else f"jobstate:{job_id}")
        last: dict[int, int] = {}
        try:
            await server.writer.flush()
            # runs (or their hosts), the first lines and the job, in one trip to the database
            snapshot, hosts, rows, job = await store.call(
                store.job_stream_start, job_id, runs, 5000 if lines else 0
            )
            for run in snapshot:
                yield _sse({"t": "run", **run_dict(run)})
            while rows:
                for row in rows:
                    last[row.run_id] = row.seq
                    yield _sse(_line_event(row, hosts.get(row.run_id, "")))
                if len(rows) < 5000:
                    break
                rows = await store.call(store.read_job_lines, job_id, rows[-1].id or 0, 5000)
                if len(rows) < 5000:  # the job's state, read after its last line
                    job = await store.call(store.get_job, job_id)
            if job is None or job.state in RunState.FINAL or not follow:
                if job is not None:
                    yield _sse({"t": "job", "job": job_id, "state": job.state})
                return
            while True:
                event = await sub.get(timeout=15)
                if sub.overflowed:
                    await server.writer.flush()
                    if not lines:
                        # State events may have been dropped with the lines: resend every state.
                        sub.reset()
                        for run in await store.call(store.job_runs, job_id):
                            yield _sse({"t": "run", **run_dict(run)})
                        job = await store.call(store.get_job, job_id)
                        if job is not None and job.state in RunState.FINAL:
                            yield _sse({"t": "job", "job": job_id, "state": job.state})
                            return
                        continue
                    for run_id in hosts:
                        for row in await store.call(
                            store.read_lines, run_id, after_seq=last.get(run_id, 0)
                        ):
                            last[row.run_id] = row.seq
                            yield _sse(_line_event(row, hosts[run_id]))
                    sub.reset()
                    continue
                if event is None:
                    yield ": keepalive\n\n"
                    continue
                # everything already waiting goes out in one write
                chunk: list[str] = []
                while event is not None:
                    if event["t"] == "line":
                        if lines and event["seq"] > last.get(event["run"], 0):
                            last[event["run"]] = event["seq"]
                            chunk.append(_sse(event))
                    elif runs or event["t"] != "run":
                        chunk.append(_sse(event))
                        if event["t"] == "job":
                            yield "".join(chunk)
                            return
                    event = sub.get_nowait() if len(chunk) < 1000 else None
                if chunk:
                    yield "".join(chunk)
        finally:
            sub.close()

    # -- runs -------------------------------------------------------------------------------

    async def list_runs(self, request: Request, user: User) -> Response:
        """GET /api/runs: the console's filters (see runfilter), newest first, keyset pages."""
        self.no_nul(request)
        query = RunQuery.from_params(request.query_params, default_limit=100, max_limit=1000)
        page = await find_runs(self.server, query)
        return JSONResponse(
            {
                "runs": [{**run_dict(r), "submitted_by": by} for r, by in page.rows],
                "next_before": page.older_before,
                "prev_after": page.newer_after,
            }
        )

    async def get_run(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}: the run and its timeline."""
        run_id = self.int_param(request, "run_id")
        store = self.server.store
        run = await store.call(store.get_run, run_id)
        if run is None:
            raise APIError(f"no run {run_id}", status=404)
        events = await store.call(store.run_events, run_id)
        return JSONResponse(
            {
                "run": run_dict(run),
                "events": [
                    {"at": e.at.isoformat(), "kind": e.kind, "detail": e.detail} for e in events
                ],
            }
        )

    async def run_log(self, request: Request, user: User) -> Response:
        """GET /api/runs/{id}/log: stored lines; after, limit, level, grep."""
        self.no_nul(request)
        run_id = self.int_param(request, "run_id")
        q = request.query_params
        store = self.server.store
        if await store.call(store.get_run, run_id) is None:
            raise APIError(f"no run {run_id}", status=404)
        levels = [lv.strip().upper() for lv in (q.get("level") or "").split(",") if lv.strip()]
        bad = [lv for lv in levels if lv not in LEVELS]
        if bad:
            raise APIError(f"unknown level {bad[0]!r}; use one of {', '.join(LEVELS)}")
        try:
            after = int(q.get("after") or 0)
            limit = min(int(q.get("limit") or 10000), 100000)
        except ValueError as exc:
            raise APIError(str(exc)) from exc
        await self.server.writer.flush()
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
        run_id = self.int_param(request, "run_id")
        store = self.server.store
        run = await store.call(store.get_run, run_id)
        if run is None:
            raise APIError(f"no run {run_id}", status=404)
        if run.state in RunState.FINAL:
            raise APIError(f"run {run_id} already ended ({run.state})", status=409)
        killed = self.server.engine.kill_run(run_id, user.name) or (
            self.server.cluster is not None  # asked of the server that executes it
        )
        await self.audit(
            user, "run.kill", request, {"run": run_id, "job": run.job_id, "host": run.host}
        )
        return JSONResponse({"run": run_id, "killed": int(killed)})

    # -- agents -----------------------------------------------------------------------------

    async def list_agents(self, request: Request, user: User) -> Response:
        """GET /api/agents: every agent with its state and facts."""
        store = self.server.store
        rows = await store.call(store.list_agents)
        registry = self.server.registry
        live = await self.server.live_servers()
        out = []
        for row in rows:
            info = registry.agents.get(row.name)
            status = registry.row_status(row, live)
            out.append(
                {
                    "name": row.name,
                    "state": row.state,
                    "status": status,
                    "fingerprint": row.fingerprint,
                    "address": row.address,
                    "server": row.server if row.connected else "",
                    "version": row.version,
                    "groups": [g for g in row.groups.split(",") if g],
                    "slots": row.slots,
                    "running": info.running if info else 0,
                    "facts": json.loads(row.facts or "{}"),
                    "last_seen": row.last_seen.isoformat() if row.last_seen else None,
                    "since": row.state_since.isoformat() if row.state_since else None,
                }
            )
        return JSONResponse({"agents": out, "refused": registry.refused[-20:]})

    async def set_agent_state(self, request: Request, user: User) -> Response:
        """POST /api/agents/{name}/accept|revoke."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        state = {"accept": AgentState.ACCEPTED, "revoke": AgentState.REVOKED}.get(action)
        if state is None:
            raise APIError(f"unknown action {action!r}", status=404)
        row = await self.server.registry.set_state(name, state)
        if row is None:
            raise APIError(f"no agent {name!r}", status=404)
        await self.audit(
            user, f"agent.{action}", request, {"agent": name, "fingerprint": row.fingerprint}
        )
        return JSONResponse({"name": name, "state": row.state})

    async def enroll_token(self, request: Request, user: User) -> Response:
        """POST /api/agents/tokens: a new enrolment token (uses, ttl)."""
        data = await self.body(request)
        try:
            uses = int(data.get("uses") or 1)
            ttl = parse_duration(data["ttl"]) if data.get("ttl") else None
        except (TypeError, ValueError) as exc:
            raise APIError(str(exc)) from exc
        if uses < 1:
            raise APIError("uses must be at least 1")
        store = self.server.store
        token = await store.call(store.create_enroll_token, uses, ttl, user.name)
        await self.audit(user, "agent.token", request, {"uses": uses, "ttl": ttl})
        return JSONResponse({"token": token, "uses": uses, "ttl": ttl}, status_code=201)

    # -- playbooks ---------------------------------------------------------------------------

    async def run_playbook(self, request: Request, user: User) -> Response:
        """POST /api/playbooks/run: a playbook's text and files, --limit and extra vars."""
        data = await self.body(request, limit=MAX_PLAYBOOK_BODY)
        text = data.get("text")
        if not isinstance(text, str) or not text.strip():
            raise APIError("text (the playbook) is required")
        files_in = data.get("files") or {}
        extra = data.get("extra_vars") or {}
        if not isinstance(files_in, dict) or not isinstance(extra, dict):
            raise APIError("files and extra_vars must be objects")
        try:
            files = {str(k): base64.b64decode(v, validate=True) for k, v in files_in.items()}
        except (ValueError, TypeError) as exc:
            raise APIError(f"files must hold base64 data: {exc}") from exc
        limit = data.get("limit") or None
        plan = await self.server.plan_playbook_bundle(
            str(data.get("name") or "playbook.yml"), text, files, limit, extra
        )
        return await self._submit_plan(request, user, plan, {})

    async def _submit_plan(
        self, request: Request, user: User, plan: PlaybookPlan, extra: dict[str, Any]
    ) -> Response:
        """Start a planned playbook and put it on the audit record."""
        await enforce_scope(
            self.server,
            user,
            list(plan.all_hosts),
            self.source(request),
            {"kind": "playbook", "playbook": plan.name, "pattern": plan.playbook.hosts},
        )
        job, runs = await submit_playbook(
            self.server.engine,
            plan,
            user=user.name,
            source=self.source(request),
            pending_timeout=self.server.pending_timeout,
        )
        await self.audit(
            user,
            "job.submit",
            request,
            {
                "job": job.id,
                "kind": "playbook",
                "playbook": plan.name,
                **extra,
                "pattern": plan.playbook.hosts,
                "limit": plan.limit,
                "hosts": list(plan.hosts),
                "extra_vars": sorted(plan.extra_vars),
                "sha256": hashlib.sha256(plan.playbook.text.encode()).hexdigest(),
            },
        )
        return JSONResponse(
            {"job": job_dict(job), "runs": [run_dict(r) for r in runs]}, status_code=201
        )

    async def list_schedules(self, request: Request, user: User) -> Response:
        """GET /api/schedules: every schedule with its next and last fire time."""
        store = self.server.store
        await self.server.scheduler.sync()
        rows = await store.call(store.list_schedules)
        return JSONResponse({"schedules": [schedule_dict(r) for r in rows]})

    async def schedule_action(self, request: Request, user: User) -> Response:
        """POST /api/schedules/{name}/enable|disable|run."""
        name = request.path_params["name"]
        action = request.path_params["action"]
        store = self.server.store
        if action in ("enable", "disable"):
            row = await store.call(
                store.update_schedule, name, enabled=action == "enable", next_fire=None
            )
            if row is None:
                raise APIError(f"no schedule {name!r}", status=404)
            await self.audit(user, f"schedule.{action}", request, {"schedule": name})
            return JSONResponse(schedule_dict(row))
        if action == "run":
            rows = {r.name: r for r in await store.call(store.list_schedules)}
            if name not in rows:
                raise APIError(f"no schedule {name!r}", status=404)
            if user.scope:
                book = await asyncio.to_thread(load_playbook, Path(rows[name].path))
                plan = plan_playbook(book, await self.server.merged_inventory())
                await enforce_scope(
                    self.server,
                    user,
                    list(plan.all_hosts),
                    self.source(request),
                    {"kind": "schedule", "schedule": name},
                )
            job_id = await self.server._submit_scheduled(Path(rows[name].path), name)
            await self.audit(user, "schedule.run", request, {"schedule": name, "job": job_id})
            return JSONResponse({"schedule": name, "job": job_id}, status_code=201)
        raise APIError(f"unknown action {action!r}", status=404)

    async def list_playbooks(self, request: Request, user: User) -> Response:
        """GET /api/playbooks: the playbooks of the server's playbooks directory."""
        return JSONResponse(await playbook_listing(self.server))

    async def run_playbook_file(self, request: Request, user: User) -> Response:
        """POST /api/playbooks/{file}/run: run a playbook of the server's playbooks directory."""
        path = playbook_path(self.server, request.path_params["file"])
        data = await self.body(request)
        extra = data.get("extra_vars") or {}
        if not isinstance(extra, dict):
            raise APIError("extra_vars must be an object")
        limit = data.get("limit") or None
        playbook = await asyncio.to_thread(load_playbook, path)
        inventory = await self.server.merged_inventory()
        plan = plan_playbook(playbook, inventory, extra_vars=extra, limit=limit)
        return await self._submit_plan(request, user, plan, {"file": path.name})

    # -- audit -------------------------------------------------------------------------------

    async def list_audit(self, request: Request, user: User) -> Response:
        """GET /api/audit: events, newest first (since, action, actor, before, limit)."""
        self.no_nul(request)
        q = request.query_params
        store = self.server.store
        try:
            rows = await store.call(
                store.audit_events,
                since=parse_time(q.get("since")),
                action=q.get("action") or None,
                actor=q.get("actor") or None,
                before_id=int(q["before"]) if q.get("before") else None,
                limit=min(int(q.get("limit") or 200), 5000),
            )
        except ValueError as exc:
            raise APIError(str(exc)) from exc
        return JSONResponse(
            {
                "events": [
                    {
                        "id": e.id,
                        "at": _iso_utc(e.at),
                        "actor": e.actor,
                        "action": e.action,
                        "source": e.source,
                        "detail": json.loads(e.detail),
                        "hash": e.hash,
                    }
                    for e in rows
                ]
            }
        )

    async def verify_audit(self, request: Request, user: User) -> Response:
        """GET /api/audit/verify: walk the hash chain."""
        store = self.server.store
        return JSONResponse(await store.call(store.audit_verify))

    async def prune(self, request: Request, user: User) -> Response:
        """POST /api/prune: {dry_run, retention, retention_failed} (admin; audited)."""
        data = await self.body(request)
        overrides: dict[str, float | None] = {}
        for name in ("retention", "retention_failed"):
            value = data.get(name)
            try:
                overrides[name] = parse_duration(value) if value not in (None, "") else None
            except (TypeError, ValueError) as exc:
                raise APIError(f"{name}: {exc}") from exc
            if overrides[name] is not None and (overrides[name] or 0) <= 0:
                raise APIError(f"{name} must be positive")
        dry_run = bool(data.get("dry_run"))
        result = await self.server.retention.prune(dry_run=dry_run, **overrides)
        await self.audit(user, "prune.dry_run" if dry_run else "prune", request, result)
        return JSONResponse(result)

    # -- inventory --------------------------------------------------------------------------

    async def hosts(self, request: Request, user: User) -> Response:
        """GET /api/hosts?pattern=: the hosts a pattern matches now."""
        pattern = request.query_params.get("pattern") or "all"
        planned = await self.server.plan_adhoc(pattern, "true")
        return JSONResponse(
            {
                "pattern": pattern,
                "hosts": [{"name": p.host, "connection": p.connection} for p in planned],
            }
        )

    async def whoami(self, request: Request, user: User) -> Response:
        """GET /api/whoami."""
        return JSONResponse({"name": user.name, "role": user.role})

    def routes(self) -> list[Route]:
        """Every API route."""
        op = ROLES_OPERATE
        return [
            Route("/api/health", _health),
            Route("/api/whoami", self.route(self.whoami)),
            Route("/api/jobs", self.route(self.submit, op), methods=["POST"]),
            Route("/api/uploads", self.route(self.upload, op), methods=["POST"]),
            Route("/api/jobs/{job_id}", self.route(self.get_job)),
            Route("/api/jobs/{job_id}/events", self.route(self.job_events)),
            Route("/api/jobs/{job_id}/kill", self.route(self.kill_job, op), methods=["POST"]),
            Route("/api/runs", self.route(self.list_runs)),
            Route("/api/runs/{run_id}", self.route(self.get_run)),
            Route("/api/runs/{run_id}/log", self.route(self.run_log)),
            Route("/api/runs/{run_id}/kill", self.route(self.kill_run, op), methods=["POST"]),
            Route("/api/runs/{run_id}/fetched", self.route(self.fetched)),
            Route("/api/agents", self.route(self.list_agents)),
            Route(
                "/api/agents/tokens", self.route(self.enroll_token, ("admin",)), methods=["POST"]
            ),
            Route(
                "/api/agents/{name}/{action}",
                self.route(self.set_agent_state, ("admin",)),
                methods=["POST"],
            ),
            Route("/api/hosts", self.route(self.hosts)),
            Route("/api/playbooks/run", self.route(self.run_playbook, op), methods=["POST"]),
            Route("/api/schedules", self.route(self.list_schedules)),
            Route("/api/audit", self.route(self.list_audit, ("admin", "auditor"))),
            Route("/api/audit/verify", self.route(self.verify_audit, ("admin", "auditor"))),
            Route("/api/prune", self.route(self.prune, ("admin",)), methods=["POST"]),
            Route(
                "/api/schedules/{name}/{action}",
                self.route(self.schedule_action, op),
                methods=["POST"],
            ),
            Route("/api/playbooks", self.route(self.list_playbooks)),
            Route(
                "/api/playbooks/{file}/run",
                self.route(self.run_playbook_file, op),
                methods=["POST"],
            ),
        ]


def _iso_utc(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 in UTC (SQLite gives times back without a zone)."""
    if value is None:
        return None
    return str(as_utc(value).isoformat())


def _file_digests(src: str) -> dict[str, str]:
    """Name -> SHA-256 of an uploaded file or of each file of a directory (for the audit log)."""
    root = Path(src)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    return {
        (p.relative_to(root).as_posix() if root.is_dir() else p.name): sha256_file(p) for p in files
    }


def _too_large(size: int, limit: int) -> str:
    return (
        f"upload too large: {human_size(size)} is more than the server's limit of "
        f"{human_size(limit)} (easytask server --upload-limit)"
    )


def human_size(n: float) -> str:
    """Bytes as `512 bytes`, `64.0 KiB`, `1.5 GiB`."""
    if n < 1024:
        return f"{int(n)} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"


def safe_relative(path: str) -> str:
    """A relative path with no `..` and no absolute part (uploads, bundles)."""
    parts = Path(path).parts
    if not parts or Path(path).is_absolute() or ".." in parts:
        raise APIError(f"path {path!r} must be relative and stay inside its directory")
    return str(Path(*parts))


# -- the server's playbooks directory ------------------------------------------------------------

PLAYBOOK_SUFFIXES = (".yml", ".yaml")


def playbooks_dir(server: Server) -> Path | None:
    """The server's playbooks directory (`--playbooks`), made absolute; None without one."""
    configured = server.config.playbooks
    return Path(configured).resolve() if configured else None


def playbook_path(server: Server, name: str) -> Path:
    """The file `name` of the playbooks directory; only a plain file name is accepted.

    400 for anything that is not a plain name (`..`, `a/b`, a leading dot), 404 for a name the
    directory does not hold: no request can name a file outside the directory.
    """
    if (
        not name
        or name != Path(name).name
        or name.startswith(".")
        or any(c in name for c in "/\\\x00")
    ):
        raise APIError(f"not a playbook file name: {name!r} (a plain name such as deploy.yml)")
    root = playbooks_dir(server)
    path = root / name if root is not None else None
    if path is None or path.suffix not in PLAYBOOK_SUFFIXES or not path.is_file():
        raise APIError(f"no playbook {name!r} in the server's playbooks directory", status=404)
    return path


def _playbook_files(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(
        p
        for p in root.iterdir()
        if p.suffix in PLAYBOOK_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _playbook_entry(path: Path) -> dict[str, Any]:
    """What the listing says about one file: name, hosts, task count, or its errors."""
    entry: dict[str, Any] = {
        "file": path.name,
        "name": None,
        "hosts": None,
        "tasks": None,
        "errors": [],
        "schedule": None,
    }
    try:
        book = load_playbook(path)
    except EasyTaskError as exc:
        problems = exc.errors if isinstance(exc, PlaybookErrors) else (exc,)
        entry["errors"] = [_problem(path, e) for e in problems]
        return entry
    entry.update(name=book.name, hosts=book.hosts, tasks=len(book.tasks))
    return entry


def _problem(path: Path, exc: EasyTaskError) -> dict[str, Any]:
    """One error of a playbook as `file:line:col: message`, with the offending line."""
    at = exc.location
    where = Path(at.path).name if at is not None else path.name
    line = at.line if at is not None else None
    col = at.col if at is not None and line is not None else None
    if line is not None:
        where += f":{line}" + (f":{col}" if col is not None else "")
    return {
        "line": line,
        "col": col,
        "message": exc.message,
        "text": f"{where}: {exc.message}",
        "source": at.source_line() if at is not None else None,
    }


def _listed_schedule(row: Any, now: datetime) -> dict[str, Any]:
    """A schedule as listed; an enabled one not yet timed by the scheduler gets its next fire."""
    data = schedule_dict(row)
    if row.enabled and row.next_fire is None:
        try:
            tz = ZoneInfo(row.tz)
            nxt = Cron.parse(row.cron).next_after(now.astimezone(tz), tz)
            data["next_fire"] = nxt.astimezone(UTC).isoformat()
        except (ValueError, KeyError):
            pass  # the scheduler logs what is wrong with it
    return data


async def playbook_listing(server: Server) -> dict[str, Any]:
    """Every playbook of the playbooks directory with its schedule (shared with the console)."""
    root = playbooks_dir(server)
    if root is None:
        return {"dir": None, "playbooks": []}
    await server.scheduler.sync()
    store = server.store
    schedules = {row.path: row for row in await store.call(store.list_schedules)}

    def read() -> list[tuple[dict[str, Any], str]]:
        return [(_playbook_entry(p), str(p.resolve())) for p in _playbook_files(root)]

    now = datetime.now(UTC)
    out = []
    for entry, resolved in await asyncio.to_thread(read):
        row = schedules.get(resolved)
        if row is not None:
            entry["schedule"] = _listed_schedule(row, now)
        out.append(entry)
    return {"dir": str(root), "playbooks": out}


def _sse(event: dict[str, Any]) -> str:
    if "_sse" in event:  # the run stream's cached encoding rides on shared live events
        event = {k: v for k, v in event.items() if k != "_sse"}
    return "data: " + json.dumps(event, separators=(",", ":")) + "\n\n"


def _line_event(row: Any, host: str) -> dict[str, Any]:
    return {
        "t": "line",
        "run": row.run_id,
        "host": host,
        "seq": row.seq,
        "ts": row.ts,
        "stream": row.stream,
        "level": row.level,
        "text": row.text,
    }


async def _health(request: Request) -> Response:
    return JSONResponse({"ok": True})


def create_app(server: Server) -> Starlette:
    """The Starlette application for a server."""
    api = Api(server)
    return Starlette(routes=api.routes())
