"""The audit chain's anchors outside the database: its HMAC key and its signed checkpoints.

The key (`audit.key` in the state dir, or the file `EASYTASK_AUDIT_KEY_FILE` names) keys every
new row's hash, so a chain rewritten in the database cannot be hashed again without it. A
checkpoint (the chain's head id and hash, its row count and the time) is signed with the
server's Ed25519 key (`export.key`, the key that signs export manifests) and appended to
`audit.checkpoints`, one JSON object a line, so rows deleted from the end are caught too.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from easytask import exports

KEY_FILE = "audit.key"
CHECKPOINT_FILE = "audit.checkpoints"
SIGNING_KEY_FILE = "export.key"


@dataclass(slots=True)
class Checkpoint:
    """One signed checkpoint: the chain's head (id, hash), its row count, the last row hashed
    without the key (rows written before the key existed), when and by which server."""

    head_id: int
    head_hash: str
    count: int
    plain_until: int
    at: str
    server: str = ""
    line: int = 0

    def describe(self) -> str:
        """How a report names it."""
        return f"checkpoint of {self.at} (line {self.line}: row {self.head_id}, {self.count} rows)"


@dataclass(slots=True)
class CheckpointLog:
    """The checkpoint file of one server: appended to, read back and checked."""

    path: Path
    key: Ed25519PrivateKey
    server: str = ""

    def append(self, head_id: int, head_hash: str, count: int, plain_until: int, at: str) -> str:
        """Sign a checkpoint and append it to the file; the line written (for the log too)."""
        body: dict[str, Any] = {
            "head_id": head_id,
            "head_hash": head_hash,
            "count": count,
            "plain_until": plain_until,
            "at": at,
            "server": self.server,
        }
        line = json.dumps(exports.sign(body, self.key), sort_keys=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return line

    def read(self) -> tuple[list[Checkpoint], list[str]]:
        """The checkpoints whose signature is this server's, and what is wrong with the others."""
        good, problems, _, _ = self.read_from(0, 0, partial=True)
        return good, problems

    def read_from(
        self, offset: int, line: int, *, partial: bool = False
    ) -> tuple[list[Checkpoint], list[str], int, int]:
        """`read` of the lines after byte `offset` (line `line`): the checkpoints, the problems,
        and the offset and line number to read on from. Unless `partial`, a last line without
        its newline (still being written) waits for the next call. A file shorter than `offset`
        is read from its start."""
        ours = exports.public_key_text(self.key)
        good: list[Checkpoint] = []
        problems: list[str] = []
        try:
            with self.path.open("rb") as fh:
                if fh.seek(0, os.SEEK_END) < offset:
                    offset, line = 0, 0
                fh.seek(offset)
                data = fh.read()
        except FileNotFoundError:
            return good, problems, 0, 0
        whole = data if partial else data[: data.rfind(b"\n") + 1]
        public = self.key.public_key()
        for number, raw in enumerate(whole.decode(errors="replace").splitlines(), start=line + 1):
            line = number
            if not raw.strip():
                continue
            where = f"{self.path.name} line {number}"
            try:
                entry = json.loads(raw)
                if entry.get("public_key") != ours:
                    raise ValueError("not signed by this server's key")
                signature = base64.b64decode(str(entry.get("signature") or ""), validate=True)
                public.verify(signature, exports.canonical(entry))
                good.append(
                    Checkpoint(
                        head_id=int(entry["head_id"]),
                        head_hash=str(entry["head_hash"]),
                        count=int(entry["count"]),
                        plain_until=int(entry["plain_until"]),
                        at=str(entry["at"]),
                        server=str(entry.get("server", "")),
                        line=number,
                    )
                )
            except (ValueError, TypeError, KeyError, InvalidSignature) as exc:
                reason = str(exc) if isinstance(exc, ValueError) and str(exc) else "edited"
                problems.append(f"{where}: checkpoint signature is not valid ({reason})")
        return good, problems, offset + len(whole), line


def open_log(state_dir: Path, server: str = "") -> CheckpointLog:
    """The checkpoint file of the server whose state dir this is, with its signing key."""
    key = exports.load_or_create_key(state_dir / SIGNING_KEY_FILE)
    return CheckpointLog(state_dir / CHECKPOINT_FILE, key, server)
