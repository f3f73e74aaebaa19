"""Exports of the run history: the stream of records, its signed manifest and the signing key."""

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

from easytask import exports
from easytask.errors import APIError
from easytask.service.context import Services
from easytask.service.reading import Reader
from easytask.store.models import Run, as_utc

RUN_BATCH = 500
LINE_BATCH = 5000
EXPORT_ID = re.compile(r"^[0-9a-f]{16}$")


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


class Exporter:
    """Exports of one server, signed with its key (made on first use, kept in the state dir)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self._key: Ed25519PrivateKey | None = None

    @property
    def key(self) -> Ed25519PrivateKey:
        """The server's signing key (made on first use, kept in the state dir)."""
        if self._key is None:
            self._key = exports.load_or_create_key(self.services.state_dir / "export.key")
        return self._key

    def manifest_path(self, export_id: str) -> Path:
        """Where the signed manifest of an export is kept."""
        return self.services.state_dir / "exports" / f"{export_id}.json"

    def finished(self, export_id: str) -> Path:
        """The signed manifest of a finished export (404 for an unknown or unfinished one)."""
        if not EXPORT_ID.match(export_id):
            raise APIError(f"not an export id: {export_id!r}", status=404)
        path = self.manifest_path(export_id)
        if not path.is_file():
            raise APIError(f"no finished export {export_id}", status=404)
        return path

    def public_key(self) -> dict[str, str]:
        """The public key that signs export manifests, and its id."""
        public = exports.public_key_text(self.key)
        return {"public_key": public, "key_id": exports.key_id(public)}

    async def start(
        self, actor: str, source: str, fmt: str, logs: bool, shown: dict[str, Any]
    ) -> dict[str, Any]:
        """Put an export on the audit record; its manifest so far (the stream completes it)."""
        export_id = secrets.token_hex(8)
        store = self.services.store
        await self.services.writer.flush()
        start = await store.call(
            store.audit,
            actor,
            "export",
            source,
            {"export": export_id, "format": fmt, "logs": logs, "filters": shown},
        )
        return {
            "manifest_version": exports.MANIFEST_VERSION,
            "export": export_id,
            "created_at": datetime.now(UTC).isoformat(),
            "exported_by": actor,
            "server": self.services.server_id,
            "format": fmt,
            "include_logs": logs,
            "filters": shown,
            "audit_head": {"id": start.id, "hash": start.hash},
        }

    async def stream(
        self,
        reader: Reader,
        source: str,
        query: dict[str, Any],
        fmt: str,
        logs: bool,
        manifest: dict[str, Any],
    ) -> AsyncIterator[bytes]:
        """The export's records (the runs the reader may see), then its signed manifest kept
        and its end audited."""
        store = self.services.store
        actor = reader.user.name
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
            batch = await reader.find_runs(**query, after_id=after, limit=RUN_BATCH)
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
        path = self.manifest_path(manifest["export"])
        await asyncio.to_thread(_write_private, path, json.dumps(signed, indent=2) + "\n")
        await store.call(
            store.audit,
            actor,
            "export.done",
            source,
            {
                "export": manifest["export"],
                "runs": runs,
                "lines": lines,
                "bytes": size,
                "sha256": manifest["sha256"],
            },
        )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
