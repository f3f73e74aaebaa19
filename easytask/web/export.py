"""Exports of run history (and logs): streamed in keyset-paginated batches, with a signed manifest."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from easytask import exports
from easytask.errors import APIError
from easytask.service.context import Services
from easytask.store.models import Run, RunState, User, as_utc
from easytask.web.requests import ApiRequests, no_nul, source
from easytask.web.runfilter import parse_time

RUN_BATCH = 500
LINE_BATCH = 5000
EXPORT_ID = re.compile(r"^[0-9a-f]{16}$")
FILTERS = ("since", "until", "task", "status", "host", "user", "q")


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value is not None else None


def run_record(run: Run, submitted_by: str) -> dict[str, Any]:
    """A run as one export record."""
    return {
        "type": "run",
        "run": run.id,
        "job": run.job_id,
        "task": run.task,
        "host": run.host,
        "state": run.state,
        "exit_code": run.exit_code,
        "attempt": run.attempt,
        "created_at": _iso(run.created_at),
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "submitted_by": submitted_by,
        "command": run.command,
        "reason": run.reason,
    }


class ExportApi:
    """GET /api/export (the stream), its manifest, and the server's export public key."""

    def __init__(self, services: Services, api: ApiRequests) -> None:
        self.services = services
        self.api = api
        self._key: Ed25519PrivateKey | None = None

    @property
    def key(self) -> Ed25519PrivateKey:
        """The server's signing key (made on first use, kept in the state dir)."""
        if self._key is None:
            self._key = exports.load_or_create_key(self.services.state_dir / "export.key")
        return self._key

    def _manifest_path(self, export_id: str) -> Path:
        return self.services.state_dir / "exports" / f"{export_id}.json"

    @staticmethod
    def filters(request: Request) -> dict[str, Any]:
        """The export's filters from the query, checked (400 before anything is streamed)."""
        no_nul(request)
        q = request.query_params
        chosen = {name: (q.get(name) or "").strip() for name in FILTERS}
        statuses = [s.strip() for v in q.getlist("status") for s in v.split(",") if s.strip()]
        chosen["status"] = ",".join(statuses)
        bad = [s for s in statuses if s not in RunState.ALL]
        if bad:
            raise APIError(f"unknown status {bad[0]!r}; use one of {', '.join(RunState.ALL)}")
        try:
            since = parse_time(chosen["since"] or None)
            until = parse_time(chosen["until"] or None)
        except ValueError as exc:
            raise APIError(f"since/until: {exc}") from exc
        return {
            "shown": {k: v for k, v in chosen.items() if v},
            "query": {
                "since": since,
                "until": until,
                "status": statuses or None,
                "host": chosen["host"] or None,
                "task": chosen["task"] or None,
                "user": chosen["user"] or None,
                "text": chosen["q"] or None,
            },
        }

    async def export(self, request: Request, user: User) -> Response:
        """GET /api/export?since&until&task&status&host&user&format=jsonl|csv&logs=1."""
        fmt = request.query_params.get("format") or "jsonl"
        if fmt not in exports.FORMATS:
            raise APIError(f"format must be one of {', '.join(exports.FORMATS)}")
        logs = request.query_params.get("logs", "0") in ("1", "true", "yes", "on")
        filters = self.filters(request)
        export_id = secrets.token_hex(8)
        store = self.services.store
        await self.services.writer.flush()
        start = await store.call(
            store.audit,
            user.name,
            "export",
            source(request),
            {"export": export_id, "format": fmt, "logs": logs, "filters": filters["shown"]},
        )
        manifest: dict[str, Any] = {
            "manifest_version": exports.MANIFEST_VERSION,
            "export": export_id,
            "created_at": datetime.now(UTC).isoformat(),
            "exported_by": user.name,
            "server": self.services.server_id,
            "format": fmt,
            "include_logs": logs,
            "filters": filters["shown"],
            "audit_head": {"id": start.id, "hash": start.hash},
        }
        name = f"easytask-export-{export_id}.{fmt}"
        return StreamingResponse(
            self._stream(user, request, filters["query"], fmt, logs, manifest),
            media_type="text/csv; charset=utf-8" if fmt == "csv" else "application/x-ndjson",
            headers={
                # the file name is ours: nothing from the request reaches a header
                "content-disposition": f'attachment; filename="{name}"',
                "x-easytask-export": export_id,
                "cache-control": "no-store",
            },
        )

    async def _stream(
        self,
        user: User,
        request: Request,
        query: dict[str, Any],
        fmt: str,
        logs: bool,
        manifest: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        store = self.services.store
        encoder = exports.Encoder(fmt)
        digest = hashlib.sha256()
        size = runs = lines = 0

        def out(chunk: bytes) -> bytes:
            nonlocal size
            digest.update(chunk)
            size += len(chunk)
            return chunk

        yield out(encoder.header())
        after = 0
        while True:
            # oldest first, keyset by run id: each batch is one short query on the DB thread
            batch = await store.call(store.find_runs, **query, after_id=after, limit=RUN_BATCH)
            if not batch:
                break
            batch.reverse()
            after = batch[-1][0].id or after
            if not logs:
                runs += len(batch)
                yield out(encoder.records(run_record(run, by) for run, by in batch))
                continue
            for run, by in batch:
                runs += 1
                yield out(encoder.records([run_record(run, by)]))
                seq = 0
                while True:
                    rows = await store.call(store.line_tuples, run.id or 0, seq, LINE_BATCH)
                    if not rows:
                        break
                    seq = rows[-1][0]
                    lines += len(rows)
                    yield out(
                        encoder.records(
                            {
                                "type": "line",
                                "run": run.id,
                                "seq": s,
                                "ts": ts,
                                "stream": stream,
                                "level": level,
                                "text": text,
                            }
                            for s, ts, stream, level, text in rows
                        )
                    )
                    if len(rows) < LINE_BATCH:
                        break
        manifest.update(rows={"runs": runs, "lines": lines}, bytes=size, sha256=digest.hexdigest())
        signed = exports.sign(manifest, self.key)
        path = self._manifest_path(manifest["export"])
        await asyncio.to_thread(_write_private, path, json.dumps(signed, indent=2) + "\n")
        await store.call(
            store.audit,
            user.name,
            "export.done",
            source(request),
            {
                "export": manifest["export"],
                "runs": runs,
                "lines": lines,
                "bytes": size,
                "sha256": manifest["sha256"],
            },
        )

    async def manifest(self, request: Request, user: User) -> Response:
        """GET /api/exports/{export_id}/manifest: the signed manifest of a finished export."""
        export_id = request.path_params["export_id"]
        if not EXPORT_ID.match(export_id):
            raise APIError(f"not an export id: {export_id!r}", status=404)
        path = self._manifest_path(export_id)
        if not path.is_file():
            raise APIError(f"no finished export {export_id}", status=404)
        return FileResponse(path, media_type="application/json")

    async def public_key(self, request: Request, user: User) -> Response:
        """GET /api/export/key: the public key that signs export manifests."""
        public = exports.public_key_text(self.key)
        return JSONResponse({"public_key": public, "key_id": exports.key_id(public)})

    def routes(self) -> list[Route]:
        """The export routes (any signed-in role)."""
        return [
            Route("/api/export", self.api.route(self.export)),
            Route("/api/export/key", self.api.route(self.public_key)),
            Route("/api/exports/{export_id}/manifest", self.api.route(self.manifest)),
        ]


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
