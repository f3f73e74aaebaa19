"""Export files: record encoding (JSON Lines, formula-safe CSV) and signed manifests.

A manifest says what was exported (filters, counts, size, SHA-256, the audit chain head at export
time) and carries an Ed25519 signature over its canonical JSON by the server's export key.
`verify` needs only the file, its manifest and, to pin the signer, the server's public key.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMATS = ("jsonl", "csv")
MANIFEST_VERSION = 1
CSV_COLUMNS = (
    "type",
    "run",
    "job",
    "task",
    "host",
    "state",
    "exit_code",
    "attempt",
    "created_at",
    "started_at",
    "finished_at",
    "submitted_by",
    "command",
    "reason",
    "seq",
    "ts",
    "stream",
    "level",
    "text",
)
# A spreadsheet treats a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


# -- records ---------------------------------------------------------------------------------


def csv_cell(value: Any) -> Any:
    """A value safe for a spreadsheet: text that could start a formula gets a leading `'`."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


class Encoder:
    """Turns run and line records into bytes of one format; CSV quotes every field it must."""

    def __init__(self, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self.fmt = fmt
        self._buf = io.StringIO()
        self._csv = csv.writer(self._buf, lineterminator="\r\n") if fmt == "csv" else None

    def header(self) -> bytes:
        """What the file starts with (the CSV header row; nothing for JSON Lines)."""
        if self._csv is None:
            return b""
        self._csv.writerow(CSV_COLUMNS)
        return self._take()

    def records(self, records: Iterable[Mapping[str, Any]]) -> bytes:
        """Encode records, each with a `type` of `run` or `line`."""
        if self._csv is None:
            for record in records:
                self._buf.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")))
                self._buf.write("\n")
        else:
            for record in records:
                self._csv.writerow([csv_cell(record.get(c)) for c in CSV_COLUMNS])
        return self._take()

    def _take(self) -> bytes:
        data = self._buf.getvalue().encode()
        self._buf.seek(0)
        self._buf.truncate()
        return data


# -- the server's export key -----------------------------------------------------------------


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The Ed25519 key that signs manifests: made once, kept readable by the owner only."""
    try:
        raw = bytes.fromhex(path.read_text().strip())
        return Ed25519PrivateKey.from_private_bytes(raw)
    except FileNotFoundError:
        pass
    key = Ed25519PrivateKey.generate()
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(raw.hex() + "\n")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """A public key as `ed25519:` + base64 of its 32 raw bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "ed25519:" + base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """The inverse of `public_key_text`; ValueError if it is not one."""
    body = text.strip().removeprefix("ed25519:")
    try:
        raw = base64.b64decode(body, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not an Ed25519 public key: {text.strip()[:60]!r}") from exc


def key_id(public_text: str) -> str:
    """A short fingerprint of a public key."""
    return hashlib.sha256(public_text.encode()).hexdigest()[:16]


# -- manifests -------------------------------------------------------------------------------


def canonical(manifest: Mapping[str, Any]) -> bytes:
    """The signed bytes: the manifest without its signature, sorted keys, no spaces."""
    body = {k: v for k, v in manifest.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sign(manifest: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """The manifest with the public key, its id and the signature filled in."""
    public = public_key_text(key)
    signed = {**manifest, "public_key": public, "key_id": key_id(public)}
    signed["signature"] = base64.b64encode(key.sign(canonical(signed))).decode()
    return signed


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def verify(path: Path, manifest: Mapping[str, Any], pinned: str | None = None) -> list[str]:
    """What is wrong with an export file and its manifest (an empty list: all is well)."""
    problems: list[str] = []
    try:
        public = parse_public_key(str(manifest.get("public_key") or ""))
        signature = base64.b64decode(str(manifest.get("signature") or ""), validate=True)
        public.verify(signature, canonical(manifest))
    except (ValueError, InvalidSignature):
        problems.append("manifest signature is not valid (the manifest was altered or not signed)")
    if pinned is not None:
        try:
            want = public_key_text(parse_public_key(pinned))
        except ValueError as exc:
            problems.append(f"--key: {exc}")
        else:
            if want != manifest.get("public_key"):
                problems.append(
                    f"signed by key {manifest.get('key_id')}, not by the pinned key {key_id(want)}"
                )
    size, digest = file_digest(path)
    if digest != manifest.get("sha256"):
        problems.append(
            f"file SHA-256 {digest} does not match the manifest's {manifest.get('sha256')} "
            "(the file was altered)"
        )
    if size != manifest.get("bytes"):
        problems.append(f"file has {size} bytes, the manifest says {manifest.get('bytes')}")
    return problems
