"""`easytask export` (and `export verify`) and `easytask prune`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from easytask.cli.common import Parser, api_client
from easytask.config import Settings
from easytask.errors import UsageError

__all__ = ["add_parsers"]


def add_parsers(sub: Any) -> None:
    """Register `export` and `prune`."""
    ex = sub.add_parser(
        "export",
        help="export runs (and logs) as JSON Lines or CSV with a signed manifest; `export verify`",
    )
    ex.add_argument("--since", help="ISO time or duration ago (1h, 2d)")
    ex.add_argument("--until", help="ISO time or duration ago")
    ex.add_argument("--task", help="task name or command contains this")
    ex.add_argument("--status", help="success, failed, ... (comma list)")
    ex.add_argument("--host", help="host name, * and ? allowed")
    ex.add_argument("--user", help="submitted by this user")
    ex.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    ex.add_argument("--include-logs", action="store_true", help="every run's output lines too")
    ex.add_argument(
        "-o", "--output", metavar="FILE", help="the export file (FILE.manifest.json beside it)"
    )
    exsub = ex.add_subparsers(dest="export_command", metavar="ACTION", parser_class=Parser)
    v = exsub.add_parser("verify", help="check an export's SHA-256 and its manifest's signature")
    v.add_argument("file")
    v.add_argument("--manifest", help="default: FILE.manifest.json")
    v.add_argument(
        "--key",
        help="pinned public key (ed25519:BASE64, or a file holding it); `GET /api/export/key`",
    )
    ex.set_defaults(func=cmd_export)

    pr = sub.add_parser("prune", help="delete runs older than the retention settings (admin)")
    pr.add_argument("--dry-run", action="store_true", help="count what would go; delete nothing")
    pr.add_argument("--retention", help="override the server's `retention` (e.g. 90d)")
    pr.add_argument("--retention-failed", help="override `retention_failed` (e.g. 365d)")
    pr.add_argument("--format", choices=("text", "json"), default="text")
    pr.set_defaults(func=cmd_prune)


def cmd_export(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.export_command == "verify":
        return _verify(args, out)
    if not args.output:
        raise UsageError("export: -o FILE is required")
    target = Path(args.output)
    if target.is_dir():
        raise UsageError(f"export: {target} is a directory; give a file name")
    client = api_client(settings)
    params = {
        "since": args.since,
        "until": args.until,
        "task": args.task,
        "status": args.status,
        "host": args.host,
        "user": args.user,
        "format": args.format,
        "logs": "1" if args.include_logs else None,
    }
    part = target.with_name(target.name + ".part")
    try:
        with part.open("wb") as fh:
            size, digest, export_id = client.stream_to("/api/export", fh, params)
        manifest = client.get(f"/api/exports/{export_id}/manifest")
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if manifest.get("sha256") != digest or manifest.get("bytes") != size:
        part.unlink(missing_ok=True)
        raise UsageError(
            f"export: the download ({size} bytes, {digest}) does not match the server's manifest "
            f"({manifest.get('bytes')} bytes, {manifest.get('sha256')}); try again"
        )
    os.replace(part, target)
    manifest_path = target.with_name(target.name + ".manifest.json")
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    rows = manifest["rows"]
    out.write(
        f"{target}: {rows['runs']} run(s), {rows['lines']} line(s), {size} bytes, "
        f"sha256 {digest}\n{manifest_path}: signed by key {manifest['key_id']}, "
        f"audit head {manifest['audit_head']['id']}\n"
    )
    return 0


def _verify(args: argparse.Namespace, out: TextIO) -> int:
    from easytask import exports

    path = Path(args.file)
    manifest_path = Path(args.manifest or f"{args.file}.manifest.json")
    for p in (path, manifest_path):
        if not p.is_file():
            raise UsageError(f"export verify: {p}: no such file")
    try:
        manifest = json.loads(manifest_path.read_text())
    except ValueError as exc:
        raise UsageError(f"{manifest_path}: not JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise UsageError(f"{manifest_path}: not a manifest (a JSON object)")
    pinned = None
    if args.key:
        key_path = Path(args.key)
        pinned = key_path.read_text().strip() if key_path.is_file() else args.key
    problems = exports.verify(path, manifest, pinned)
    if problems:
        for problem in problems:
            sys.stderr.write(f"{path}: {problem}\n")
        out.write(f"{path}: NOT verified\n")
        return 1
    pin = " (pinned)" if pinned else ""
    out.write(
        f"{path}: OK: sha256 {manifest['sha256']}, {manifest['rows']['runs']} run(s), "
        f"{manifest['rows']['lines']} line(s), signed by key {manifest['key_id']}{pin}\n"
    )
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    client = api_client(settings)
    data = client.post(
        "/api/prune",
        {
            "dry_run": args.dry_run,
            "retention": args.retention,
            "retention_failed": args.retention_failed,
        },
    )
    if args.format == "json":
        out.write(json.dumps(data, indent=2) + "\n")
        return 0
    verb = "would delete" if data["dry_run"] else "deleted"
    out.write(
        f"{verb} {data['jobs']} job(s), {data['runs']} run(s), {data['lines']} log line(s), "
        f"{data.get('files', 0)} file(s) (retention {data['retention'] or 'off'}, failed {data['retention_failed'] or 'off'})\n"
    )
    return 0
