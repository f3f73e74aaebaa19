"""Files that jobs carry: uploads, copy/script/fetch requests, checksums, and their digests."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from easytask.errors import APIError
from easytask.scheduler.fileops import FileAction, checksum_command, sha256_file
from easytask.service.context import Services

UPLOAD_CHUNK = 1 << 20  # bytes buffered before a write (and the memory an upload holds)


def checksum_job(data: dict[str, Any]) -> tuple[str, str]:
    """A checksum request: its command and the job's name."""
    spec = data.get("checksum")
    if not isinstance(spec, dict) or not str(spec.get("path") or "").strip():
        raise APIError("checksum.path is required")
    path = str(spec["path"]).strip()
    expect = str(spec.get("expect") or "").strip() or None
    if expect is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expect):
        raise APIError(f"checksum.expect {expect!r} is not a SHA-256 (64 hex digits)")
    return checksum_command(path, expect), f"checksum {path}"


def file_action(state: Path, data: dict[str, Any]) -> tuple[FileAction, str]:
    """A copy, script or fetch request, its uploads written to a private dir."""
    kind = data.get("kind")
    spec = data.get(kind) if isinstance(kind, str) else None
    if kind not in ("copy", "script", "fetch") or not isinstance(spec, dict):
        raise APIError(
            "kind must be command, checksum, copy, script or fetch, with an object of that name"
        )
    if kind == "fetch":
        path = str(spec.get("path") or "")
        if not path:
            raise APIError("fetch.path is required")
        if Path(path).name in ("", ".", ".."):
            raise APIError(f"fetch.path {path!r} must name a file (it is kept under that name)")
        return FileAction("fetch", dest=path, store_dir=str(state / "fetched")), f"fetch {path}"
    if kind == "copy":  # checked before any file is written
        dest = str(spec.get("dest") or "")
        if not dest:
            raise APIError("copy.dest is required")
        mode = spec.get("mode") or None
        if mode is not None and not re.fullmatch(r"0?[0-7]{3,4}", str(mode)):
            raise APIError(f"copy.mode {mode!r} is not an octal mode like 0644")
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
            os.utime(upload)  # just used: retention leaves it to the job about to refer to it
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
        shutil.rmtree(upload, ignore_errors=True)
        raise APIError(f"{kind}: file data must be base64: {exc}") from exc
    except APIError:
        if not spec.get("upload"):
            shutil.rmtree(upload, ignore_errors=True)
        raise
    src = str(upload / name)
    if kind == "script":
        args = str(spec.get("args") or "")
        interpreter = spec.get("interpreter") or None
        action = FileAction("script", src=src, args=args, interpreter=interpreter)
        return action, f"script {name}" + (f" {args}" if args else "")
    action = FileAction(
        "copy",
        src=src,
        dest=dest,
        mode=mode,
        owner=spec.get("owner") or None,
        backup=bool(spec.get("backup")),
    )
    return action, f"copy {name} -> {dest}"


async def store_upload(
    services: Services,
    name: str,
    declared: int | None,
    chunks: AsyncIterator[bytes],
    actor: str,
    source: str,
) -> dict[str, Any]:
    """Stream an upload to disk for a later copy or script, and put it on the audit record.

    Memory stays bounded whatever the size; past the server's --upload-limit the upload
    is refused (413) and nothing is kept. Returns the upload id, name, size and SHA-256.
    """
    if not name or name != Path(name).name or name in (".", ".."):
        raise APIError("name (the file's plain name, no directory) is required")
    limit = services.settings.upload_limit
    if declared is not None and declared > limit:
        raise APIError(too_large(declared, limit), status=413)
    token = secrets.token_hex(8)
    folder = services.state_dir / "uploads" / token
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
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise APIError(too_large(size, limit), status=413)
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
    result = {"upload": token, "name": name, "size": size, "sha256": digest.hexdigest()}
    await services.audit(actor, "file.upload", source, dict(result))
    return result


def upload_id(state: Path, src: str) -> str | None:
    """The id of the upload (`STATE_DIR/uploads/ID/...`) a copy or script sends, if it is one."""
    try:
        parts = Path(src).relative_to(state / "uploads").parts
    except ValueError:
        return None
    return parts[0] if parts else None


def fetched_file(services: Services, run_id: int) -> Path:
    """The file a fetch run brought back (404 without one)."""
    folder = services.state_dir / "fetched" / str(run_id)
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    if not files:
        raise APIError(f"run {run_id} fetched no file", status=404)
    return files[0]


def file_digests(src: str) -> dict[str, str]:
    """Name -> SHA-256 of an uploaded file or of each file of a directory (for the audit log)."""
    root = Path(src)
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    return {
        (p.relative_to(root).as_posix() if root.is_dir() else p.name): sha256_file(p) for p in files
    }


def too_large(size: int, limit: int) -> str:
    """The refusal of an upload past the server's limit."""
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
